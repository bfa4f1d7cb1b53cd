"""Reading a cpu frame: summaries per load and setting, the recommendation, the sweep's metrics,
the usual rules measured against the best, and where the best setting flips with the load.

Trials that count are `metrics.completed` (warm-up and failed trials left out).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mateperf import avatar_pacing, metrics, progress, recommend, recommended_file, results, stats
from mateperf.cpu_topology import CpuTopology
from mateperf.thread_rules import ORIGINAL_HARD_CODED_THREADS, heuristics


def _tolerance(df: pd.DataFrame) -> float:
    if "tolerance" in df.columns:
        return float(df["tolerance"].iloc[0])
    return recommend.DEFAULT_TOLERANCE


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Median and CI per condition and setting for every metric measured."""
    d = metrics.completed(df)
    names = [m.name for m in metrics.present("cpu", d) if d[m.name].notna().any()]
    by = ["condition", "background", "frame_busy", *recommended_file.SETTINGS]
    parts = []
    for key, sub in d.groupby(by, sort=True):
        for name in names:
            values = sub[name].dropna()
            if values.empty:
                continue
            s = stats.summarize(values)
            parts.append({**dict(zip(by, key, strict=True)), "metric": name, **s})
    return pd.DataFrame(parts)


def recommendation(df: pd.DataFrame, fingerprint: dict, run_id: str = "") -> dict:
    """recommended.json's content for this run (see mateperf.recommend)."""
    model_file = str(df["model_file"].iloc[0]) if "model_file" in df.columns else ""
    return recommend.recommend(
        df, fingerprint, _tolerance(df), run_id=run_id, model_file=model_file
    )


def sweep_metrics(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str]]:
    out = []
    for cond, sub in metrics.completed(df).groupby("condition", sort=True):
        out += [
            (f"generation tokens/s, {cond}", sub, "tg_tps"),
            (f"prompt tokens/s, {cond}", sub, "pp_tps"),
        ]
    return out


def per_condition(df: pd.DataFrame) -> pd.DataFrame:
    """The recommender's rule per metric and load (mateperf.recommend.per_condition)."""
    return recommend.per_condition(metrics.completed(df), _tolerance(df))


def write_recommendation(run, df: pd.DataFrame) -> Path:
    """Write recommended.json into the run directory; returns its path."""
    rec = recommendation(df, run.info.get("fingerprint", {}), run.run_id)
    path = recommended_file.write(run.path / "recommended.json", rec)
    say = progress.reporter("cpu")
    chosen = ", ".join(f"{k}={rec[k]}" for k in recommended_file.SETTINGS)
    frame = (
        ""
        if rec.get("meets_frame_budget") is None
        else f"; frame p99 {rec['frame_p99_ms']:.2f} ms, budget {rec['frame_budget_ms']:.2f} ms"
        + ("" if rec["meets_frame_budget"] else " (over)")
    )
    say(f"recommended for {rec['for']}: {chosen}{frame} -> {results.shown_path(path)}")
    for note in rec["notes"]:
        say(f"note: {note}")
    return path


def topology_from(info: dict) -> CpuTopology | None:
    """The CPU budget a run detected, rebuilt from its fingerprint (None if not recorded)."""
    data = dict(info.get("fingerprint", {}).get("cpu_topology") or {})
    if not data:
        return None
    for derived in ("usable", "physical_usable", "smt"):
        data.pop(derived, None)
    if not data.get("os_platform"):  # stored before the topology recorded its OS
        data["os_platform"], data["arch"] = _platform_of(info.get("fingerprint", {}).get("os"))
    return CpuTopology(**data)


def _platform_of(os_text: str | None) -> tuple[str, str]:
    """(sys.platform, machine) from a fingerprint's platform.platform() string, e.g.
    "Linux-6.1.0-x86_64-with-glibc2.36" or "Windows-10-10.0.22631-SP0"."""
    text = os_text or ""
    name = {"Linux": "linux", "Windows": "win32", "macOS": "darwin", "Darwin": "darwin"}
    os_platform = name.get(text.split("-", 1)[0], "")
    arch = next((a for a in ("x86_64", "aarch64", "arm64") if a in text), "")
    return os_platform, arch


def median_at(d: pd.DataFrame, metric: str, **where) -> float:
    """The median of `metric` over the rows where every column equals its value (NaN if none)."""
    sub = d
    for k, v in where.items():
        sub = sub[sub[k] == v]
    values = sub[metric].dropna()
    return float(np.median(values)) if len(values) else float("nan")


def rules_measured(d: pd.DataFrame, topo: CpuTopology, rec: dict) -> list[dict]:
    """Each usual rule (and the recommendation): its thread counts, what runs here (clamped to
    the usable CPUs), and per load of the recommendation's background its median tg, the gap
    to the best n_threads, and its median pp at the recommended batch pair."""
    target = d[d["background"] == rec["for"]]
    candidates = [(h.name, h.n_threads, h.n_threads_batch, h.reasoning) for h in heuristics(topo)]
    candidates.append(
        ("**recommended**", rec["n_threads"], rec["n_threads_batch"], "this run's rule")
    )
    rows = []
    for name, t, tb, why in candidates:
        t_here, tb_here = min(t, topo.usable), min(tb, topo.usable)
        loads = {}
        for cond, sub in target.groupby("condition", sort=True):
            tg = median_at(sub, "tg_tps", n_threads=t_here)
            best = max(median_at(sub, "tg_tps", n_threads=x) for x in sub["n_threads"].unique())
            pp = median_at(
                sub,
                "pp_tps",
                n_threads_batch=tb_here,
                n_batch=rec["n_batch"],
                n_ubatch=rec["n_ubatch"],
            )
            loads[cond] = {
                "tg_tps": tg,
                "tg_gap": recommend.worse_gap(tg, best, True),
                "pp_tps": pp,
            }
        rows.append(
            {
                "rule": name,
                "n_threads": t,
                "n_threads_batch": tb,
                "runs": (t_here, tb_here),
                "reasoning": why,
                "loads": loads,
            }
        )
    return rows


def best_per_load(d: pd.DataFrame) -> list[dict]:
    """Per load (background, frame busy share): the best setting for tg, pp and the whole
    reply (`recommend.evaluate`), and the median frame p99 at each n_threads where measured."""
    out = []
    for (background, busy), sub in d.groupby(["background", "frame_busy"], sort=True):
        row: dict = {"load": recommend.condition_label(background, busy), "best": {}}
        for metric, by in (
            ("tg_tps", ("n_threads",)),
            ("pp_tps", ("n_threads_batch",)),
            ("e2e_ms", ("n_threads", "n_threads_batch")),
        ):
            t = recommend.evaluate(sub, metric, by)
            if len(t):
                best = t[t["best"]].iloc[0]
                row["best"][metric] = {k: int(best[k]) for k in by}
        if "frame_p99_ms" in sub.columns and sub["frame_p99_ms"].notna().any():
            row["frame_p99_ms"] = {
                int(t): median_at(sub, "frame_p99_ms", n_threads=t)
                for t in sorted(sub["n_threads"].unique())
            }
        out.append(row)
    return out


def band(sub: pd.DataFrame, by: str, metric: str):
    """(x, median, CI low, CI high) of `metric` per value of `by` (the CI is the median's
    where it cannot be computed), for a curve with its 95% band."""
    xs, med, lo, hi = [], [], [], []
    for x, g in sub.groupby(by, sort=True):
        values = g[metric].dropna()
        if values.empty:
            continue
        s = stats.summarize(values)
        xs.append(int(x))
        med.append(s["median"])
        lo.append(s["ci_low"] if not np.isnan(s["ci_low"]) else s["median"])
        hi.append(s["ci_high"] if not np.isnan(s["ci_high"]) else s["median"])
    return xs, med, lo, hi


def batch_grid(d: pd.DataFrame, rec: dict):
    """(threads, (n_batch, n_ubatch) pairs, median pp tok/s grid) under the recommendation's
    background: the heatmap of prompt speed over threads × batch."""
    rows = d[d["background"] == rec["for"]]
    batches = sorted(
        {(int(b), int(u)) for b, u in zip(rows["n_batch"], rows["n_ubatch"], strict=True)}
    )
    threads = sorted(int(t) for t in rows["n_threads_batch"].unique())
    grid = np.full((len(threads), len(batches)), np.nan)
    for i, t in enumerate(threads):
        for j, (b, u) in enumerate(batches):
            grid[i, j] = median_at(rows, "pp_tps", n_threads_batch=t, n_batch=b, n_ubatch=u)
    return threads, batches, grid


def against_original(
    df: pd.DataFrame, rec: dict, metric: str = "tg_tps"
) -> list[tuple[str, int, stats.ABResult]]:
    """(load, the original 6 threads as run here, `metric` at the recommended n_threads against
    it) per load of the recommendation's background."""
    d = metrics.completed(df)
    usable = int(d["usable_cpus"].iloc[0]) if "usable_cpus" in d else 1
    original = min(ORIGINAL_HARD_CODED_THREADS, usable)
    m = metrics.get("cpu", metric)
    out = []
    if metric not in d:
        return out
    for cond, sub in d[d["background"] == rec["for"]].groupby("condition", sort=True):
        a = sub.loc[sub["n_threads"] == original, metric].dropna()
        b = sub.loc[sub["n_threads"] == rec["n_threads"], metric].dropna()
        if a.empty or b.empty:
            continue
        r = stats.compare(a, b, higher_is_better=m.higher_is_better, words=m.words)
        out.append((cond, original, r))
    return out


def pacing_by_load(d: pd.DataFrame, fps: float) -> list[dict]:
    """Per companion load (frame_busy, ascending) the avatar stand-in's pacing
    (avatar_pacing.summary) with the median frame p50/p99 it measured; [] where the rows carry
    no overshoot (runs from before it was recorded)."""
    rows = d[d["background"] == "companion"]
    if avatar_pacing.OVERSHOOT not in rows.columns or rows[avatar_pacing.OVERSHOOT].isna().all():
        return []
    return [
        {
            **avatar_pacing.summary(sub, fps, float(busy)),
            "frame_p50_ms": median_at(sub, "frame_p50_ms"),
            "frame_p99_ms": median_at(sub, "frame_p99_ms"),
        }
        for busy, sub in rows.groupby("frame_busy", sort=True)
    ]
