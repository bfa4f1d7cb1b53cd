"""Phase 4 "cpu": how many threads, measured under the load the companion really runs beside.

Every trial loads the model afresh with one setting (n_threads for generation, n_threads_batch
for prompts, n_batch/n_ubatch) under one background:
- `idle`: nothing else runs;
- `companion`: a frame-paced peer process at `fps`, its main thread busy for `frame_busy` of
  every frame (a stand-in for Unity's per-frame work), while emotion commands stream to it over
  the bridge at `command_hz`, as during a reply (mateperf.companion_load).
In the trial's window: prompt processing of `pp_tokens` random tokens (llama-bench's pp), then
generation of `tg_tokens` (tg) with the process's CPU time, then one real companion reply
streamed (time to first token, whole reply). The peer reports the frame intervals it achieved
meanwhile (does the model's threading make the avatar stutter?).

Settings and backgrounds are visited in a seeded random order inside each round, one round per
trial, so a drift of the host hits every setting alike; the first trial is a warm-up of the
process and page cache, kept in the table marked `is_warmup`.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from mateperf import companion, metrics, model, progress, recommend, runner, stats
from mateperf.companion_load import background
from mateperf.phases import llm as llm_phase
from mateperf.phases.cpu.params import CpuParams, Setting, settings
from mateperf.phases.declaration import Phase
from mateperf.trackers import cpu as cpu_detect

ROUND_SPLIT = ("trials",)
SCENARIO = "threads"


_progress = progress.reporter("cpu")


def trial(setting: Setting, p: dict, model_path: str, rng: np.random.Generator, user: str) -> dict:
    """Load, then pp, tg and one reply inside the background's measurement window."""
    config = model.LlamaConfig(
        model_path=model_path,
        n_ctx=p["n_ctx"],
        n_batch=setting.n_batch,
        n_ubatch=setting.n_ubatch,
        n_threads=setting.n_threads,
        n_threads_batch=setting.n_threads_batch,
        seed=p["seed"],
    )
    load = background(setting.background, p["peer"], p["fps"], setting.frame_busy, p["command_hz"])
    with load:
        llm, load_s = model.load(config)
        try:
            # touch every weight once: the timed part must not pay a fresh load's page faults
            llm_phase.bench_pp(llm, 16, setting.n_batch, rng)
            with load.window() as avatar:
                pp_s = llm_phase.bench_pp(llm, p["pp_tokens"], setting.n_batch, rng)
                cpu_start = time.process_time()
                tg_s = llm_phase.bench_tg(llm, p["tg_tokens"], rng)
                cpu_tg_s = time.process_time() - cpu_start
                reply = llm_phase.stream_reply(
                    llm, companion.chat_messages(user), p["max_tokens"], p["seed"]
                )
        finally:
            model.close(llm)
    row = {
        "load_s": load_s,
        "pp_tps": p["pp_tokens"] / pp_s,
        "tg_tps": p["tg_tokens"] / tg_s,
        "cpu_ms_per_token": 1e3 * cpu_tg_s / p["tg_tokens"],
        "ttft_ms": reply["ttft_ms"],
        "e2e_ms": reply["e2e_ms"],
        "reply_tokens": reply["gen_tokens"],
        "prompt_tokens": reply["prompt_tokens"],
    }
    if avatar is not None:
        row.update(avatar.figures())
    return row


# --- the phase --------------------------------------------------------------------------------


def run(
    model: str = "",  # noqa: A002 - the parameter name users type
    n_threads: str = "auto",
    n_threads_batch: str = "same",
    n_batch: str = "512",
    n_ubatch: str = "same",
    backgrounds: str = "idle,companion",
    frame_busy: str = "0.5",
    peer: str = "python",
    fps: float = 60.0,
    command_hz: float = 10.0,
    trials: int = 5,
    pp_tokens: int = 128,
    tg_tokens: int = 48,
    max_tokens: int = 24,
    n_ctx: int = 1024,
    tolerance: float = recommend.DEFAULT_TOLERANCE,
    seed: int = 1234,
) -> pd.DataFrame:
    p = CpuParams(**locals()).as_dict()
    from mateperf import model as model_mod

    topo = cpu_detect.detect()
    path = model_mod.resolve_model(model or None)
    visit = settings(p, topo.usable)
    rng = np.random.default_rng(seed)
    order = runner.interleaved(visit, trials, rng)
    _progress(
        f"{len(visit)} settings × {trials} trials (+1 warm-up) on {topo.usable} usable CPUs, "
        f"seed {seed}"
    )
    rows = []
    for i, v in enumerate(order):
        k, s = v.round, v.item
        user = companion.USER_TURNS[max(k, 0) % len(companion.USER_TURNS)]
        base = {
            "scenario": SCENARIO,
            "trial": k,
            "is_warmup": k < 0,
            "visit": i,
            "n_threads": s.n_threads,
            "n_threads_batch": s.n_threads_batch,
            "n_batch": s.n_batch,
            "n_ubatch": s.n_ubatch,
            "background": s.background,
            "frame_busy": s.frame_busy,
            "condition": recommend.condition_label(s.background, s.frame_busy),
            "peer": p["peer"] if s.background == "companion" else "",
        }
        row, base["error"] = runner.attempt(trial, s, p, str(path), rng, user)
        row = row or {}
        if base["error"]:
            _progress(f"{i + 1}/{len(order)} {s.label}: FAILED {base['error']}")
        rows.append({**base, **row})
        if row:
            frame = f", frame p99 {row['frame_p99_ms']:.1f} ms" if "frame_p99_ms" in row else ""
            _progress(
                f"{i + 1}/{len(order)} {s.label}: pp {row['pp_tps']:.0f}, "
                f"tg {row['tg_tps']:.1f} tok/s, ttft {row['ttft_ms']:.0f} ms{frame}"
            )
    df = pd.DataFrame(rows)
    runner.require_some(df, "trial")
    df["model_file"] = path.name
    df["usable_cpus"] = topo.usable
    return df


# --- summaries (compute only) -----------------------------------------------------------------


def kept(df: pd.DataFrame) -> pd.DataFrame:
    return metrics.completed(df)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Median and CI per condition and setting for every metric measured."""
    d = kept(df)
    names = [m.name for m in metrics.present("cpu", d) if d[m.name].notna().any()]
    by = ["condition", "background", "frame_busy", *recommend.SETTINGS]
    parts = []
    for key, sub in d.groupby(by, sort=True):
        for name in names:
            values = sub[name].dropna()
            if values.empty:
                continue
            s = stats.summarize(values)
            parts.append({**dict(zip(by, key, strict=True)), "metric": name, **s})
    return pd.DataFrame(parts)


def trial_table(df: pd.DataFrame) -> pd.DataFrame:
    return kept(df)


def recommendation(df: pd.DataFrame, fingerprint: dict, run_id: str = "") -> dict:
    """recommended.json's content for this run (see mateperf.recommend)."""
    tolerance = float(df["tolerance"].iloc[0]) if "tolerance" in df.columns else 0.03
    model_file = str(df["model_file"].iloc[0]) if "model_file" in df.columns else ""
    return recommend.recommend(df, fingerprint, tolerance, run_id=run_id, model_file=model_file)


def sweep_metrics(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str]]:
    d = kept(df)
    out = []
    for cond, sub in d.groupby("condition", sort=True):
        out += [
            (f"generation tokens/s, {cond}", sub, "tg_tps"),
            (f"prompt tokens/s, {cond}", sub, "pp_tps"),
        ]
    return out


def per_condition(df: pd.DataFrame) -> pd.DataFrame:
    """The recommender's rule per metric and load (mateperf.recommend.per_condition)."""
    tolerance = float(df["tolerance"].iloc[0]) if "tolerance" in df.columns else 0.03
    return recommend.per_condition(kept(df), tolerance)


def write_recommendation(run, df: pd.DataFrame):
    """Write recommended.json into the run directory; returns its path."""
    rec = recommendation(df, run.info.get("fingerprint", {}), run.run_id)
    path = recommend.write(run.path / "recommended.json", rec)
    chosen = ", ".join(f"{k}={rec[k]}" for k in recommend.SETTINGS)
    _progress(f"recommended for {rec['for']}: {chosen} -> {path}")
    for note in rec["notes"]:
        _progress(f"note: {note}")
    return path


DECLARATION = Phase(
    name="cpu",
    number=4,
    notebook=None,
    run=run,
    summarize=summarize,
    params=CpuParams,
    round_split=ROUND_SPLIT,
    trial_table=trial_table,
    sweep_metrics=sweep_metrics,
    representative=None,
    report="mateperf.reports.cpu",
)
