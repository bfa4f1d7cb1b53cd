"""Axes a person can read: plain ratio ticks on a log axis, time labels in staggered rows.

Matplotlib's log axis labels a narrow range with its minor ticks in scientific notation
("9.6×10⁻¹9.8×10⁻¹…", printed over one another in a small panel), and labels placed at event
times pile up where events come seconds apart. These helpers choose what to print instead;
tests/test_plots_legible.py checks every report's figures for text over text and legends
over data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

# Ratios a reader knows at a glance, finest first: a wide axis takes the finest set that
# puts at most `most` ticks on it.
_DECADES = [10.0**k for k in range(-6, 7)]
ROUND_RATIO_SETS = (
    sorted({0.25, 0.5, 0.75, 1.5, 2.0, 3.0, 4.0, *_DECADES}),
    sorted({m * d for d in _DECADES for m in (1.0, 2.0, 5.0)}),
    _DECADES,
    _DECADES[::2],
)


def ratio_ticks(low: float, high: float, most: int = 4) -> list[float]:
    """At most `most` plain ticks between `low` and `high` (> 0).

    A range within a factor of 3 gets evenly stepped decimals (0.96, 0.98, 1, 1.02); a wider
    one round ratios (0.5, 1, 2, ...; then 1-2-5 and powers of ten as it widens).
    """
    if not (low > 0 and high > low):
        return [1.0]
    if high / low < 3:
        span = high - low
        steps = (0.001, 0.002, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0)
        step = next((s for s in steps if span / s <= most - 1), 1.0)
        first = math.ceil(low / step - 1e-9)
        return [round(k * step, 6) for k in range(first, math.floor(high / step + 1e-9) + 1)]
    for candidates in ROUND_RATIO_SETS:
        ticks = [r for r in candidates if low <= r <= high]
        if len(ticks) <= most:
            return ticks
    return ticks[:: math.ceil(len(ticks) / most)]


def ratio_axis(ax, low: float, high: float, most: int = 4) -> None:
    """A log x axis from `low` to `high` (widened to show 1) with plain ratio labels, "0.98"."""
    low, high = min(low, 1.0), max(high, 1.0)
    pad = (high / low) ** 0.08 if high > low else 1.05
    ax.set_xscale("log")
    ax.set_xlim(low / pad, high * pad)
    ax.xaxis.set_major_locator(FixedLocator(ratio_ticks(low / pad, high * pad, most)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def stagger_labels(
    ax, labels: Sequence[tuple[float, str]], fontsize: float = 7, gap_pt: float = 2.0
) -> int:
    """Each (x in data, text) above the axes at its x, in the lowest row where it overlaps no
    label already placed; returns the number of rows used.

    Placed by measuring each label's box with the figure's renderer, so the axes must have
    their final size and x limits (the limits are fixed here).
    """
    fig = ax.figure
    ax.set_xlim(ax.get_xlim())
    renderer = fig.canvas.get_renderer()
    row_height_pt = fontsize * 1.3 + gap_pt
    placed: list[list] = []
    for x, text in sorted(labels, key=lambda item: item[0]):
        row = 0
        while True:
            label = ax.annotate(
                text,
                (x, 1.0),
                xycoords=ax.get_xaxis_transform(),
                xytext=(1.5, gap_pt + row * row_height_pt),
                textcoords="offset points",
                fontsize=fontsize,
                va="bottom",
                ha="left",
                annotation_clip=False,
            )
            box = label.get_window_extent(renderer).expanded(1.0, 1.0)
            if row == len(placed):
                placed.append([])
            if not any(box.overlaps(other) for other in placed[row]):
                placed[row].append(box)
                break
            label.remove()
            row += 1
    return len(placed)


def finite_range(*columns) -> tuple[float, float]:
    """The lowest and highest finite positive value over the given arrays (NaN, NaN if none)."""
    values = np.concatenate([np.asarray(c, float).ravel() for c in columns])
    values = values[np.isfinite(values) & (values > 0)]
    if not len(values):
        return math.nan, math.nan
    return float(values.min()), float(values.max())
