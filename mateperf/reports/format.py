"""Formatting every report shares: numbers, CIs, p-values, markdown tables, saved figures.

The lowest layer of the reports: every phase's report module, the overview and the final
assembler (mateperf.report) import it, and it imports none of them. Deterministic output only:
a regenerated report and its plots are byte-identical (fixed PNG metadata, no timestamps).
"""

from __future__ import annotations

import math
import ntpath
import posixpath
from pathlib import Path, PurePath, PureWindowsPath

import matplotlib.pyplot as plt  # the Agg backend: set by mateperf.reports
import pandas as pd

from mateperf.results import replace_retrying

# Fixed PNG metadata so a regenerated plot is byte-identical.
PNG_METADATA = {"Software": None}


def fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and abs(value) >= 1e4:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def fmt_ci(median: float, low: float, high: float, digits: int = 1) -> str:
    """`12.3 [11.9, 12.8]`: a median with its 95% CI."""
    return f"{fmt(median, digits)} [{fmt(low, digits)}, {fmt(high, digits)}]"


def fmt_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def save_figure(fig, plots_dir: Path, name: str, md_dir: Path, alt: str) -> str:
    """Write the figure as PNG (atomically) and return its markdown image link."""
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    path = plots_dir / f"{name}.png"
    tmp = plots_dir / f".{name}.png.tmp"
    fig.savefig(tmp, dpi=110, bbox_inches="tight", metadata=PNG_METADATA, format="png")
    plt.close(fig)
    replace_retrying(tmp, path)
    return f"![{alt}]({link_target(path, md_dir)})"


def link_target(path: PurePath, md_dir: PurePath) -> str:
    """``path`` relative to the markdown file's folder, with forward slashes on every OS.

    Markdown renderers read a backslash as part of the name, so Windows' ``plots\\x.png``
    would break every image. The path's own flavour decides how it is made relative (a
    ``WindowsPath`` is a ``PureWindowsPath``), so the Windows case can be tested anywhere.
    """
    if isinstance(path, PureWindowsPath):
        return PureWindowsPath(ntpath.relpath(str(path), str(md_dir))).as_posix()
    return posixpath.relpath(str(path), str(md_dir))


def table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False) if len(df) else "_(no rows)_"


def repetition_note(df: pd.DataFrame, params: dict, points: str) -> str:
    """How adaptive repetition stopped, from the rows' stop_* columns ("" for a fixed run).

    One sentence: how many `points` stopped as precise and how many ran to the cap, after how
    many trials, and the range of their CI half-widths, so a reader sees what it bought.
    """
    if "stop_reason" not in df:
        return ""
    d = df[~df["is_warmup"].astype(bool)] if "is_warmup" in df else df
    stops = d[["stop_reason", "stop_trials", "stop_half_width"]].drop_duplicates()
    if stops.empty:
        return ""
    parts = []
    for reason, how in (("precise", "stopped as precise after"), ("cap", "ran to the cap of")):
        s = stops[stops["stop_reason"] == reason]
        if len(s):
            n = " or ".join(map(str, sorted({int(x) for x in s["stop_trials"]})))
            parts.append(f"{len(s)} of {len(stops)} {how} {n} trials")
    widths = 100 * stops["stop_half_width"].replace(math.inf, math.nan)
    spread = (
        f" (CI half-widths {widths.min():.1f}–{widths.max():.1f}%)" if widths.notna().any() else ""
    )
    pct = params.get("precision_pct")
    target = f"{pct:g}" if isinstance(pct, (int, float)) else "?"
    return (
        f"Adaptive repetition: each {points} stops once its median's 95% CI is within "
        f"±{target}% (from {params.get('min_trials')} trials on), else at "
        f"its cap; here {'; '.join(parts)}{spread}."
    )
