"""Markdown and plots from stored results; results/FINAL_RESULTS.md.

Reads only run directories, never measures, so the final report can be regenerated at any
time and twice in a row gives the same bytes (no timestamps of its own, fixed plot metadata).
Each phase formats its own section in mateperf/reports/<phase>.py; this module holds what the
sections share and assembles the final document.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import shlex
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from mateperf import phases, results  # noqa: E402
from mateperf.host import format_fingerprint  # noqa: E402

FINAL_NAME = "FINAL_RESULTS.md"
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
    os.replace(tmp, path)
    return f"![{alt}]({os.path.relpath(path, md_dir)})"


def table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False) if len(df) else "_(no rows)_"


def reproduce_command(info: dict) -> str:
    """The command that re-runs this measurement with the same parameters.

    The stored command, plus `-p` for every parameter whose default has changed since, so the
    command stays true when the notebook's defaults move on.
    """
    command = info.get("command", "")
    phase = info.get("phase", "?")
    if not command.startswith("mateperf "):
        command = f"mateperf run {phase}"
    if info.get("kind") == "sweep":
        return command
    try:
        current = phases.defaults(phase)
    except Exception:  # a phase whose notebook is gone: the stored command is all we have
        return command
    params = info.get("params", {})
    given = set(re.findall(r"-p (\w+)=", command)) | {"model"}
    extra = [
        f"-p {shlex.quote(f'{k}={v}')}"
        for k, v in params.items()
        if k in current and k not in given and current[k] != v
    ]
    return " ".join([command, *extra])


def run_header(info: dict) -> str:
    fp = info.get("fingerprint", {})
    lines = [
        f"# {info.get('phase', '?')} — run `{info.get('run_id', '?')}`",
        "",
        f"Started {info.get('started_at', '?')}.",
        "",
        "Reproduce: `" + reproduce_command(info) + "`",
        "",
        "Host:",
        "",
        "```",
        format_fingerprint(fp) if fp else "(no fingerprint)",
        "```",
        "",
    ]
    return "\n".join(lines)


def phase_section(phase: str, run: results.RunDir, plots_dir: Path, md_dir: Path) -> str:
    kind = "sweep" if run.info.get("kind") == "sweep" else phase
    report = importlib.import_module(f"mateperf.reports.{kind}")
    df = run.read_frame(phase)
    return report.section(df, run.info, plots_dir, md_dir)


def _report_command(paths: list[Path] | None, root: Path) -> str:
    if not paths:
        return "mateperf report"
    shown = []
    for p in paths:
        p = Path(p).resolve()
        try:
            shown.append(str(Path(root.name) / p.relative_to(root.resolve())))
        except ValueError:
            shown.append(str(p))
    return "mateperf report " + " ".join(shown)


def select_runs(paths: list[Path] | None, root: Path | None = None) -> list[results.RunDir]:
    """The named runs, or the latest finished run and the latest sweep of each phase.

    A phase may define `representative(info)` to keep its self-check runs (the memory
    phase's injected leak) out of the default selection.
    """
    if paths:
        return [results.RunDir.open(p) for p in paths]
    found = []
    for phase in phases.available_phases():
        accept = getattr(phases.module(phase), "representative", None)
        found.append(results.latest_run(phase, root, accept=accept))
        found.append(results.latest_run(phase, root, kinds=("sweep",)))
    return [r for r in found if r is not None]


def write_final(paths: list[Path] | None = None, root: Path | None = None) -> Path:
    """Regenerate results/FINAL_RESULTS.md and results/plots/ from stored runs."""
    root = Path(root) if root else results.default_root()
    runs = select_runs(paths, root)
    if not runs:
        raise FileNotFoundError(f"no finished runs under {root}: run `mateperf run PHASE` first")
    # Generated output only: rebuilt from scratch so no plot of an earlier selection lingers.
    plots_root = root / "plots"
    if plots_root.is_dir():
        shutil.rmtree(plots_root)
    order = {p: i for i, p in enumerate(phases.PHASES)}
    runs = sorted(
        runs,
        key=lambda r: (order.get(r.phase, 99), r.info.get("kind") == "sweep", r.run_id),
    )
    parts = [
        "# Desktop-Mate performance — final results",
        "",
        "Generated from stored run directories; do not edit by hand. Regenerate with "
        f"`{_report_command(paths, root)}`.",
        "Every figure below comes from the run named in its section, on the host printed there.",
        "",
        "| phase | run | status | reproduce |",
        "|---|---|---|---|",
    ]
    for r in runs:
        parts.append(
            f"| {r.phase} | `{r.run_id}` | {r.info.get('status')} | `{reproduce_command(r.info)}` |"
        )
    missing = [p for p in phases.PHASES if p not in {r.phase for r in runs}]
    if missing:
        parts += ["", f"Phases with no stored run: {', '.join(missing)}."]
    hosts = {}
    for r in runs:
        text = format_fingerprint(r.info.get("fingerprint", {}))
        hosts.setdefault(text, []).append(r.run_id)
    parts += ["", "## Hosts", ""]
    for text, ids in hosts.items():
        parts += [f"Runs {', '.join(f'`{i}`' for i in ids)}:", "", "```", text, "```", ""]
    for r in runs:
        # one folder per run: two runs of a phase must not overwrite each other's plots
        section = phase_section(r.phase, r, plots_root / r.run_id, root)
        parts += ["", section.rstrip(), ""]
        parts += [f"_Source: `{r.run_id}`; reproduce with `{reproduce_command(r.info)}`._", ""]
    out = root / FINAL_NAME
    results.atomic_write_text(out, "\n".join(parts).rstrip() + "\n")
    return out
