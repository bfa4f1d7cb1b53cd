"""Can a person read a figure? Text that overlaps other text, and legends over the data.

Measured on the figure as matplotlib lays it out (the renderer's `get_window_extent` of every
drawn text), not on the PNG's pixels: two labels whose boxes intersect are printed one over
the other, whatever their colours. What counts:

- text: every tick label drawn (inside the axis' view interval, non-empty), every annotation
  and `ax.text`, axis labels, axes titles and the figure's suptitle;
- data: the vertices of every line, marker and bar drawn in data coordinates (reference lines
  such as `axvline`, spans and fill bands are not data points);
- a legend "covers" a data point when the point lies inside the legend's frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.axis import Axis
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

# Boxes that only touch are readable; glyph boxes carry a pixel or so of slack.
TOLERANCE_PX = 1.0


@dataclass(frozen=True)
class Problem:
    kind: str  # "overlap" or "legend"
    what: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.what}"


def _drawn_tick_labels(axis: Axis) -> list[Text]:
    low, high = sorted(axis.get_view_interval())
    span = high - low
    out = []
    for ticks in (axis.get_major_ticks(), axis.get_minor_ticks()):
        for tick in ticks:
            loc = tick.get_loc()
            if loc is None or not (low - 1e-9 * span <= loc <= high + 1e-9 * span):
                continue
            for label in (tick.label1, tick.label2):
                if label.get_visible() and label.get_text().strip():
                    out.append(label)
    return out


def texts(fig: Figure) -> list[tuple[str, Text]]:
    """Every piece of text the figure draws, with a name saying where it is."""
    found: list[tuple[str, Text]] = []
    if fig._suptitle is not None and fig._suptitle.get_text():
        found.append(("suptitle", fig._suptitle))
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        where = f"axes {i} ({ax.get_title() or ax.get_ylabel() or 'untitled'})"
        for name, axis in (("x tick", ax.xaxis), ("y tick", ax.yaxis)):
            found += [(f"{where} {name}", t) for t in _drawn_tick_labels(axis)]
        for name, t in (("x label", ax.xaxis.label), ("y label", ax.yaxis.label)):
            if t.get_visible() and t.get_text():
                found.append((f"{where} {name}", t))
        for title in (ax.title, ax._left_title, ax._right_title):
            if title.get_text():
                found.append((f"{where} title", title))
        found += [(f"{where} annotation", t) for t in ax.texts if t.get_visible() and t.get_text()]
    return found


def _box(text: Text, renderer) -> Bbox:
    b = text.get_window_extent(renderer)
    return Bbox.from_extents(
        b.x0 + TOLERANCE_PX, b.y0 + TOLERANCE_PX, b.x1 - TOLERANCE_PX, b.y1 - TOLERANCE_PX
    )


def overlapping_text(fig: Figure, renderer) -> list[Problem]:
    boxes = [(name, t, _box(t, renderer)) for name, t in texts(fig)]
    problems = []
    for i, (name_a, a, box_a) in enumerate(boxes):
        for name_b, b, box_b in boxes[i + 1 :]:
            if box_a.width > 0 and box_b.width > 0 and box_a.overlaps(box_b):
                problems.append(
                    Problem(
                        "overlap",
                        f"{name_a} {a.get_text()!r} and {name_b} {b.get_text()!r}",
                    )
                )
    return problems


def data_points(ax) -> np.ndarray:
    """Display coordinates of the data points drawn in `ax` (inside its frame)."""
    points = []
    for line in ax.lines:
        if not line.get_visible() or line.get_transform() != ax.transData:
            continue  # axvline / axhline: a reference, drawn in axes coordinates on one side
        xy = np.column_stack(line.get_data()).astype(float) if len(line.get_xdata()) else None
        if xy is not None:
            points.append(ax.transData.transform(xy))
    for collection in ax.collections:
        offsets = collection.get_offsets()
        if (
            collection.get_visible()
            and len(offsets)
            and collection.get_offset_transform() == ax.transData
        ):
            points.append(ax.transData.transform(np.asarray(offsets, float)))
    for container in ax.containers:
        if isinstance(container, BarContainer):
            for bar in container:
                x, y, w, h = bar.get_x(), bar.get_y(), bar.get_width(), bar.get_height()
                tip = (
                    (x + w / 2, y + h)
                    if container.orientation == "vertical"
                    else (x + w, y + h / 2)
                )
                points.append(ax.transData.transform([tip]))
    if not points:
        return np.empty((0, 2))
    xy = np.concatenate(points)
    xy = xy[np.isfinite(xy).all(axis=1)]
    frame = ax.get_window_extent()
    inside = (
        (xy[:, 0] >= frame.x0)
        & (xy[:, 0] <= frame.x1)
        & (xy[:, 1] >= frame.y0)
        & (xy[:, 1] <= frame.y1)
    )
    return xy[inside]


def legends_over_data(fig: Figure, renderer) -> list[Problem]:
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    problems = []
    for legend in [*legends, *fig.legends]:
        if not legend.get_visible():
            continue
        frame = legend.get_window_extent(renderer)
        for i, ax in enumerate(fig.axes):
            xy = data_points(ax)
            covered = (
                (xy[:, 0] > frame.x0)
                & (xy[:, 0] < frame.x1)
                & (xy[:, 1] > frame.y0)
                & (xy[:, 1] < frame.y1)
            )
            if covered.any():
                title = ax.get_title() or ax.get_ylabel() or f"axes {i}"
                problems.append(
                    Problem("legend", f"a legend covers {int(covered.sum())} point(s) of {title!r}")
                )
    return problems


def problems(fig: Figure) -> list[Problem]:
    """Everything that keeps a person from reading `fig`, as laid out for drawing."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return overlapping_text(fig, renderer) + legends_over_data(fig, renderer)
