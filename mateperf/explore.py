"""Helpers for exploring stored runs in JupyterLab (notebooks/00_explore.ipynb)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.patches import Patch

from mateperf import compare, metrics, results, stats

# From mateperf.results, not mateperf.report: importing the report switches matplotlib to Agg,
# after which plt.show() in the notebook's widgets would draw nothing.
FINAL_REPORT = results.FINAL_NAME


def runs_table(root: Path | None = None) -> pd.DataFrame:
    """One row per stored run: id, phase, kind, status, start and parameters."""
    rows = []
    for run in results.list_runs(root):
        rows.append(
            {
                "run_id": run.run_id,
                "phase": run.phase,
                "kind": run.info.get("kind", "run"),
                "status": results.status_now(run.info),  # a killed run: interrupted
                "started_at": run.info.get("started_at"),
                "path": results.shown_path(run.path, root),
                **{f"p.{k}": v for k, v in run.info.get("params", {}).items()},
            }
        )
    return pd.DataFrame(rows)


def host_label(fingerprint: dict) -> str:
    """A host as a person tells it apart: its name and CPU (two VMs share a hostname)."""
    name = fingerprint.get("hostname") or "?"
    cpu = fingerprint.get("cpu_model") or "?"
    return f"{name} ({cpu}, {fingerprint.get('usable_cpus', '?')} CPUs)"


def load(run_dirs: list[str | Path], phase: str | None = None) -> pd.DataFrame:
    """The tidy rows of several runs in one frame; run_id tells them apart, `host` the machine
    each ran on (runs from several hosts are plotted apart: plot_metric)."""
    frames = []
    for p in run_dirs:
        run = results.RunDir.open(Path(p))
        df = results.load_run(Path(p), phase)
        frames.append(df.assign(host=host_label(run.info.get("fingerprint", {}))))
    df = pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()
    return metrics.without_warmup(df)


def factors(df: pd.DataFrame) -> list[str]:
    """What `by` and `hue` may be: the phase's declared factors (metrics.FACTORS) that vary or
    name the run, in declaration order."""
    phases = df["phase"].dropna().unique() if "phase" in df.columns else []
    out: list[str] = []
    for phase in phases:
        for f in metrics.factors(str(phase), df):
            if f not in out and (f in ("run_id", "host") or df[f].nunique(dropna=True) > 1):
                out.append(f)
    return out


def default_hue(df: pd.DataFrame, metric: str, by: str = "run_id") -> str | None:
    """The finest declared grouping `metric` varies over: of the phase's identity columns
    (metrics.IDENTITY: llm's scenario and arm), the one with the most values among the rows
    that measured it, the later declared on a tie (ttft_ms: `arm`, cold and warm apart).
    None where nothing varies."""
    rows = df[df[metric].notna()] if metric in df.columns else df.iloc[:0]
    phases = rows["phase"].dropna().unique() if "phase" in rows.columns else []
    best, most = None, 1
    for phase in phases:
        for f in metrics.IDENTITY.get(str(phase), ()):
            if f == by or f not in rows.columns:
                continue
            n = rows[f].nunique(dropna=True)
            if n > 1 and n >= most:
                best, most = f, n
    return best


# Values that stand for something else: (column, value) -> what to call it; `{used}` is what
# ran, from the column named beside it.
SPECIAL = {
    ("n_threads", 0): ("auto ({used})", "threads_used"),
    ("n_threads_batch", 0): ("auto ({used})", "threads_batch_used"),
    ("n_gpu_layers", -1): ("all ({used})", "gpu_layers_effective"),
}


def value_label(rows: pd.DataFrame, column: str, value) -> str:
    """`value` of `column` as a plot names it: special values for what they mean."""
    try:
        key = (column, int(value))
    except (TypeError, ValueError):
        return str(value)
    if key not in SPECIAL or float(value) != key[1]:
        return str(value)
    text, beside = SPECIAL[key]
    used = rows.loc[rows[column] == value, beside] if beside in rows.columns else pd.Series()
    used = sorted({str(int(u)) for u in used.dropna()}) if len(used) else []
    return text.format(used="/".join(used) if used else "default")


def newest_host(df: pd.DataFrame) -> str | None:
    """The host of the newest run in `df` (run ids begin with their start time)."""
    if "host" not in df.columns or df.empty:
        return None
    newest = max(df["run_id"].dropna().unique(), key=str) if "run_id" in df.columns else None
    rows = df[df["run_id"] == newest] if newest is not None else df
    return str(rows["host"].iloc[0])


def declared(df: pd.DataFrame) -> list[str]:
    """The metrics declared for the phases in `df` (what the dropdowns offer)."""
    phases = df["phase"].dropna().unique() if "phase" in df.columns else []
    return [m.name for p in phases for m in metrics.present(str(p), df)]


def report_links(
    run_dirs: list[str | Path], root: Path | None = None, start: str | Path | None = None
) -> str:
    """Markdown links to the newest reports: FINAL_RESULTS.md and each chosen run's own report.

    Links are relative to `start` (default: the working directory, which in JupyterLab is the
    notebook's folder), so JupyterLab opens them when it serves the repository root.
    """
    start = Path(start) if start else Path.cwd()
    root = Path(root) if root else results.default_root()
    found = [(root / FINAL_REPORT, "all phases, regenerated by `mateperf report`")]
    for p in run_dirs:
        run = results.RunDir.open(Path(p))
        kind = run.info.get("kind", "run")
        found.append((run.path / f"{run.phase}.md", f"{kind} of {run.phase}"))
    lines = []
    for path, what in found:
        if not path.is_file():
            continue
        try:
            href = Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
        except ValueError:  # another drive on Windows: no relative path
            href = path.resolve().as_uri()
        label = f"{path.parent.name}/{path.name}"
        lines.append(f"- [{label}]({href}) — {what}")
    return "\n".join(lines) if lines else f"No reports under {root} yet: run `mateperf all`."


def replicate_values(rows: pd.DataFrame, metric: str) -> list[float]:
    """One value per run and trial (round, trial): the replicates a CI may be computed over.

    Per-request rows of one trial are not independent; they are reduced to the trial's median.
    """
    decl = metrics.find(metric)
    if decl is None:
        raise ValueError(f"{metric!r} is not a declared metric (see mateperf.metrics)")
    out: list[float] = []
    groups = rows.groupby("run_id", sort=True) if "run_id" in rows.columns else [("", rows)]
    for _, run_rows in groups:
        out += [float(v) for v in compare.trial_values(run_rows, decl, "median")]
    return out


AUTO = "auto"  # plot_metric's hue: the finest declared grouping the metric varies over
ALL_HOSTS = "all"  # plot_metric's host: every host, each named in the legend


def plot_metric(
    df: pd.DataFrame,
    metric: str,
    by: str = "run_id",
    hue: str | None = AUTO,
    host: str | None = None,
):
    """Median over trials of `metric` per value of `by` (95% CI bars), one series per `hue`.

    Each trial counts once (a request-level metric through its per-trial median). Only series
    with data for the metric are drawn (a metric may exist for one scenario only), each in its
    own colour, and the bars present at a tick are centred on it; a single series needs no
    legend. `hue` "auto" is `default_hue` (ttft_ms: cold and warm apart). One host per plot:
    `host` None is the newest run's, named in the title; "all" draws every host, each series
    named with its host.
    """
    decl = metrics.find(metric)
    if decl is None:
        raise ValueError(f"{metric!r} is not a declared metric (see mateperf.metrics)")
    hosts = sorted(df["host"].dropna().unique()) if "host" in df.columns else []
    title = ""
    if len(hosts) > 1 and host != ALL_HOSTS:
        host = host or newest_host(df)
        df = df[df["host"] == host]
        title = f"host {host} ({len(hosts) - 1} other host(s) not shown: host='all')"
    elif len(hosts) == 1:
        title = f"host {hosts[0]}"
    if hue == AUTO:
        hue = default_hue(df, metric, by)
    if len(hosts) > 1 and host == ALL_HOSTS:  # every host: each series carries its host
        hue = [hue, "host"] if hue and hue != "host" else "host"
    categories = sorted(df[by].dropna().unique(), key=_order)
    groups = [(None, df)] if not hue else list(df.groupby(hue, sort=True))
    if hue:
        keys = [hue] if isinstance(hue, str) else hue
        groups = [
            (
                " · ".join(
                    value_label(df, k, v)
                    for k, v in zip(keys, name if isinstance(name, tuple) else (name,), strict=True)
                ),
                g,
            )
            for name, g in groups
        ]
    series = []  # (name, {category index: summary}) of the series with data
    for name, group in groups:
        points = {}
        for j, cat in enumerate(categories):
            s = stats.summarize(replicate_values(group[group[by] == cat], metric))
            if s["n"] > 0:
                points[j] = s
        if points:
            series.append((name, points))
    fig, ax = plt.subplots(figsize=(7, 4))
    slots = max((sum(j in pts for _, pts in series) for j in range(len(categories))), default=1)
    width = 0.8 / max(1, slots)
    colours = _colours(len(series))
    for j in range(len(categories)):
        here = [(i, pts[j]) for i, (_, pts) in enumerate(series) if j in pts]
        for k, (i, s) in enumerate(here):
            one = s["n"] < 2  # no CI from a single replicate: no error bar
            low = 0 if one else s["median"] - s["ci_low"]
            high = 0 if one else s["ci_high"] - s["median"]
            ax.bar(
                j + (k - (len(here) - 1) / 2) * width,
                s["median"],
                width=width,
                yerr=[[low], [high]],
                capsize=3,
                color=colours[i],
            )
    ax.set_xticks(
        range(len(categories)),
        [value_label(df, by, c) for c in categories],
        rotation=30,
        ha="right",
    )
    ax.set_xlabel(by)
    ax.set_ylabel(f"{decl.title}: median of trials, 95% CI")
    hue_name = hue if isinstance(hue, str) or not hue else " · ".join(hue)
    if hue and len(series) > 1:
        handles = [Patch(color=colours[i], label=str(name)) for i, (name, _) in enumerate(series)]
        ax.legend(handles=handles, title=hue_name, fontsize="small")
    elif hue and series:
        title = f"{title}; " if title else ""
        title += f"{hue_name} = {series[0][0]}"
    if title:
        ax.set_title(title, fontsize="small")
    if not series:
        ax.text(0.5, 0.5, f"no data for {metric}", transform=ax.transAxes, ha="center")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    # what was chosen, for a caption beside the image (the notebook's widgets show it)
    fig.explore_choice = {
        "metric": metric,
        "by": by,
        "hue": hue_name,
        "series": [str(name) for name, _ in series],
        "host": ", ".join(hosts) if host == ALL_HOSTS else (host or (hosts[0] if hosts else "")),
    }
    return fig


def caption(fig) -> str:
    """One line saying what a plot_metric figure shows: metric, x, series and host."""
    c = getattr(fig, "explore_choice", None)
    if not c:
        return ""
    series = f"; series {c['hue']}: {', '.join(c['series'])}" if c["hue"] else ""
    return f"{c['metric']} by {c['by']}{series}; host: {c['host'] or '?'}"


def _order(value):
    """Numbers in numeric order, then the rest as text."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _colours(n: int) -> list:
    """n distinct colours: the default cycle while it lasts, then a qualitative colour map."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", [])
    if n <= len(cycle):
        return cycle[:n]
    cmap = plt.get_cmap("tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def run_picker(phase: str, root: Path | None = None, chosen: list | None = None):
    """A list of the phase's stored runs to pick from (several with Ctrl/Shift), newest first,
    each named with its kind and host; `chosen` selected. Its value: the picked run paths."""
    import ipywidgets as widgets

    runs = [r for r in results.list_runs(root, phase) if r.frame_path().is_file()]
    runs = sorted(runs, key=lambda r: r.run_id, reverse=True)
    options = [
        (
            f"{r.run_id} · {r.info.get('kind', 'run')} · "
            f"{host_label(r.info.get('fingerprint', {}))}",
            r.path,
        )
        for r in runs
    ]
    picked = {Path(p).resolve() for p in chosen or []}
    value = tuple(path for _, path in options if path.resolve() in picked)
    return widgets.SelectMultiple(
        options=options,
        value=value,
        rows=min(8, max(3, len(options))),
        description="runs",
        layout=widgets.Layout(width="95%"),
    )


NEWEST_HOST = "(newest run's host)"
NO_HUE = "(none)"


class Controls:
    """The plot's dropdowns: the declared metrics, the phase's declared factors for `by` and
    `hue` (metrics.FACTORS, not every column), and the host."""

    def __init__(self, df: pd.DataFrame, metric: str, by: str, hue: str, host: str):
        import ipywidgets as widgets

        self.metric = widgets.Dropdown(description="metric")
        self.by = widgets.Dropdown(description="by")
        self.hue = widgets.Dropdown(description="hue")
        self.host = widgets.Dropdown(description="host")
        self.widgets = [self.metric, self.by, self.hue, self.host]
        self.update(df, metric, by, hue or NO_HUE, host or NEWEST_HOST)

    @staticmethod
    def _set(widget, options: list, wanted) -> None:
        if list(widget.options) != options:
            keep = wanted if wanted in options else widget.value
            widget.options = options
            widget.value = keep if keep in options else options[0]
        elif wanted in options and widget.value != wanted:
            widget.value = wanted

    def update(self, df: pd.DataFrame, metric=None, by=None, hue=None, host=None) -> None:
        """The options for `df` (other runs picked), keeping each choice that still applies."""
        found = factors(df) or ["run_id"]
        hosts = sorted(df["host"].dropna().unique()) if "host" in df.columns else []
        self._set(self.metric, declared(df) or ["(no metric)"], metric or self.metric.value)
        self._set(self.by, found, by or self.by.value)
        self._set(self.hue, [AUTO, NO_HUE, *found], hue or self.hue.value)
        self._set(self.host, [NEWEST_HOST, *hosts, ALL_HOSTS], host or self.host.value)

    def values(self) -> dict:
        return {
            "metric": self.metric.value,
            "by": self.by.value,
            "hue": None if self.hue.value == NO_HUE else self.hue.value,
            "host": None if self.host.value == NEWEST_HOST else self.host.value,
        }
