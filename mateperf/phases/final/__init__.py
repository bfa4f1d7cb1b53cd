"""Phase 6 "final": a whole companion turn, the original settings against every optimisation.

A turn is what a user lives through: the app loads the model (and, when warm-up is on, runs
its tiny warm-up generation), the user's message goes in, the reply streams, and while it
streams the companion drives the avatar: an emotion beat (expression ramp, blink, head
movement) when the first words appear, another every `beat_chunks` pieces of text, and the
reply's emotion tag at the end, sent over the bridge to a frame-paced peer (the Python peer or
the C# core under Mono) whose main thread is busy for `frame_busy` of every frame, as Unity's.

Arms, each a fresh process state (model loaded afresh, peer started afresh):
- `baseline`: the original settings: n_threads 6 clamped to the CPUs this process may use, no
  warm-up, commands sent one by one (each waited for), the original `balanced` profile
  (n_gpu_layers 35);
- `threads`, `warmup`, `batching`, `profile`: the baseline with that one optimisation;
- `optimised`: all four: the cpu phase's recommended.json, warm-up, one `batch` per beat, the
  profile selected for this machine's free VRAM (cpu_fallback without a GPU).

Arms are visited in a seeded random order within each round, one round per trial; the first
turn is a warm-up of the process and page cache, kept and marked `is_warmup`. Every arm is
compared with the baseline per trial (the replicate), and the single optimisations' ratios are
multiplied to show whether they add up to the combination.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from mateperf import companion, metrics, model, progress, recommend, runner, stats
from mateperf.companion_load import CompanionLoad
from mateperf.errors import ParameterError
from mateperf.phases import llm as llm_phase
from mateperf.phases.declaration import Phase
from mateperf.phases.final.params import (
    ARMS,
    BASELINE,
    OPTIMISED,
    SINGLE,
    FinalParams,
    parse_arms,
    parse_peers,
)
from mateperf.phases.ipc import expression_sequence
from mateperf.trackers import cpu as cpu_detect

ROUND_SPLIT = ("trials",)
SCENARIO = "turn"
ORIGINAL_THREADS = 6
ORIGINAL_GPU_LAYERS = 35  # the companion's `balanced` GPU profile
EMOTION_TAG = re.compile(r"\[(happy|sad|surprised|thinking|angry|relaxed)\]", re.I)


@dataclass(frozen=True)
class TurnConfig:
    n_threads: int
    n_threads_batch: int
    n_batch: int
    n_ubatch: int
    n_gpu_layers: int
    offload_kqv: bool
    flash_attn: bool
    warmup: bool
    batching: bool
    profile: str


# --- parameters -------------------------------------------------------------------------------


_progress = progress.reporter("final")


def latest_recommendation(root: Path | None = None) -> tuple[dict | None, str]:
    """The newest cpu run's recommended.json that fits this host, and where it came from."""
    from mateperf import results

    for run in reversed(results.list_runs(root, "cpu")):
        path = run.path / "recommended.json"
        if run.info.get("status") == results.STATUS_OK and path.is_file():
            try:
                return recommend.load(path), str(path)
            except recommend.ConfigError as exc:
                return None, f"the newest cpu run's recommendation does not fit: {exc}"
    return None, "no cpu run with a recommended.json under the results root"


def auto_profile(path: Path) -> tuple[dict, str, str]:
    """The GPU profile for this machine: (load parameters, profile, why).

    The gpu phase selects it (the fastest profile whose predicted VRAM fits the free VRAM with a
    margin); this phase takes the newest gpu run's choice made on this host for this model.
    Without GPU offload or a GPU there is nothing to select: cpu_fallback.
    """
    from mateperf import host, results
    from mateperf.trackers.gpu import GpuMonitor

    if not llm_phase.gpu_offload_available():
        return {"n_gpu_layers": 0}, "cpu_fallback", "this llama-cpp-python build has no GPU offload"
    monitor = GpuMonitor()
    try:
        available, status = monitor.available, monitor.status
    finally:
        monitor.close()
    if not available:
        return {"n_gpu_layers": 0}, "cpu_fallback", status
    here = host.fingerprint()
    for run in reversed(results.list_runs(None, "gpu")):
        if run.info.get("status") != results.STATUS_OK or not run.frame_path().is_file():
            continue
        if host.same_host(run.info.get("fingerprint", {}), here):
            continue
        df = run.read_frame()
        chosen = df[(df["scenario"] == "selection") & df["chosen"].fillna(False).astype(bool)]
        if chosen.empty or str(chosen["model_file"].iloc[0]) != path.name:
            continue
        r = chosen.iloc[0]
        params = {
            "n_gpu_layers": int(r["cfg_n_gpu_layers"]),
            "offload_kqv": bool(r["cfg_offload_kqv"]),
            "flash_attn": bool(r["cfg_flash_attn"]),
        }
        return params, str(r["profile"]), f"selected by the gpu run {run.run_id} ({r['reason']})"
    raise ParameterError(
        "phase final: no gpu run of this model on this host to take the GPU profile from: "
        "run `mateperf run gpu` first (it selects the profile for the free VRAM)"
    )


def arm_configs(p: dict, path: Path, usable: int) -> tuple[dict[str, TurnConfig], dict]:
    """Each arm's settings, and the facts behind the optimised ones (for the report)."""
    original = min(ORIGINAL_THREADS, usable)
    baseline = TurnConfig(
        n_threads=original,
        n_threads_batch=original,
        n_batch=512,
        n_ubatch=512,
        n_gpu_layers=ORIGINAL_GPU_LAYERS,
        offload_kqv=True,
        flash_attn=False,
        warmup=False,
        batching=False,
        profile="balanced (original: n_gpu_layers 35)",
    )
    if p.get("config"):
        rec, rec_source = recommend.load(p["config"]), str(Path(p["config"]).resolve())
    else:
        rec, rec_source = latest_recommendation()
    tuned = baseline
    if rec is not None:
        tuned = replace(baseline, **recommend.as_params(rec))
    else:
        _progress(f"threads arm keeps the original threads: {rec_source}")
    params, profile, why = auto_profile(path)
    profiled = replace(
        baseline,
        n_gpu_layers=int(params.get("n_gpu_layers", 0)),
        offload_kqv=bool(params.get("offload_kqv", False)),
        flash_attn=bool(params.get("flash_attn", False)),
        profile=profile,
    )
    configs = {
        BASELINE: baseline,
        "threads": tuned,
        "warmup": replace(baseline, warmup=True),
        "batching": replace(baseline, batching=True),
        "profile": profiled,
        OPTIMISED: replace(
            tuned,
            warmup=True,
            batching=True,
            n_gpu_layers=profiled.n_gpu_layers,
            offload_kqv=profiled.offload_kqv,
            flash_attn=profiled.flash_attn,
            profile=profile,
        ),
    }
    facts = {
        "recommendation": rec_source if rec is not None else f"none: {rec_source}",
        "profile": profile,
        "profile_reason": why,
        "original_threads": original,
    }
    return configs, facts


# --- one turn ---------------------------------------------------------------------------------


class PeakRss:
    """This process's peak RSS over a block, sampled every `interval_s` in a thread."""

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self.peak_mb = math.nan
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._read()
            self._stop.wait(self.interval_s)

    def _read(self) -> None:
        rss = self._proc.memory_info().rss / 2**20
        self.peak_mb = rss if math.isnan(self.peak_mb) else max(self.peak_mb, rss)

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="peak-rss")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._read()


def beat(step: int, emotion: str | None = None) -> list[tuple[str, dict]]:
    """One emotion beat's commands (the ipc phase's sequence), for `emotion` when known."""
    commands = list(expression_sequence(step))
    if emotion:
        commands = [
            (c, {**d, "name": emotion}) if c == "set_expression" else (c, d) for c, d in commands
        ]
    return commands


def turn(cfg: TurnConfig, p: dict, path: Path, peer: str, user: str, vram) -> dict:
    config = model.LlamaConfig(
        model_path=str(path),
        n_ctx=p["n_ctx"],
        n_batch=cfg.n_batch,
        n_ubatch=cfg.n_ubatch,
        n_threads=cfg.n_threads,
        n_threads_batch=cfg.n_threads_batch,
        n_gpu_layers=cfg.n_gpu_layers,
        offload_kqv=cfg.offload_kqv,
        flash_attn=cfg.flash_attn,
        seed=p["seed"],
    )
    with CompanionLoad(peer, p["fps"], p["frame_busy"], command_hz=0) as avatar, PeakRss() as rss:
        vram.start_turn()
        llm, load_s = model.load(config)
        try:
            warmup_ms = llm_phase.warm_up(llm, p["warmup_tokens"], p["seed"]) if cfg.warmup else 0.0
            beats = []

            def on_chunk(index: int, text: str) -> None:
                if index % p["beat_chunks"] == 0:
                    beats.append(index)
                    avatar.send_beat(beat(len(beats)), cfg.batching)

            with avatar.window() as window:
                reply = llm_phase.stream_reply(
                    llm, companion.chat_messages(user), p["max_tokens"], p["seed"], on_chunk
                )
                tag = EMOTION_TAG.search(reply["reply_text"])
                avatar.send_beat(
                    beat(len(beats) + 1, tag.group(1).lower() if tag else "relaxed"),
                    cfg.batching,
                )
        finally:
            model.close(llm)
        peak_vram_mb = vram.end_turn()
    figures = window.figures()
    return {
        "load_s": load_s,
        "warmup_ms": warmup_ms,
        "startup_ms": 1e3 * load_s + warmup_ms,
        "ttft_ms": reply["ttft_ms"],
        "e2e_ms": reply["e2e_ms"],
        "tg_tps": reply["tg_tps"],
        "pp_tps": reply["pp_tps"],
        "reply_tokens": reply["gen_tokens"],
        "beat_ms": figures["beat_ms"],
        "beats": figures["beats"],
        "frame_p50_ms": figures["frame_p50_ms"],
        "frame_p99_ms": figures["frame_p99_ms"],
        "cmd_errors": figures["cmd_errors"],
        "peak_rss_mb": rss.peak_mb,
        "peak_vram_mb": peak_vram_mb,
    }


class VramWatch:
    """Peak VRAM of this process per turn where NVML sees a GPU; NaN and a reason otherwise."""

    def __init__(self):
        from mateperf.trackers.gpu import GpuMonitor

        self.monitor = GpuMonitor(interval_ms=50)
        self.status = self.monitor.status
        self.available = self.monitor.available

    def start_turn(self) -> None:
        if self.available:
            self.monitor.start()

    def end_turn(self) -> float:
        if not self.available:
            return math.nan
        self.monitor.stop()
        samples = self.monitor.samples()
        if samples.empty:
            return math.nan
        # this process's VRAM where NVML can attribute it (not inside a container), else the
        # device's used VRAM (nothing else runs on a benchmark machine)
        own = samples["vram_process_mb"].max()
        return float(own if own > 0 else samples["vram_used_mb"].max())

    def close(self) -> None:
        self.monitor.close()


# --- the phase --------------------------------------------------------------------------------


def run(
    model: str = "",  # noqa: A002 - the parameter name users type
    config: str = "",
    arms: str = ",".join(ARMS),
    peers: str = "python",
    frame_busy: float = 0.5,
    fps: float = 60.0,
    trials: int = 5,
    max_tokens: int = 48,
    warmup_tokens: int = 2,
    beat_chunks: int = 8,
    n_ctx: int = 2048,
    seed: int = 1234,
) -> pd.DataFrame:
    p = FinalParams(**locals()).as_dict()
    from mateperf import model as model_mod

    path = model_mod.resolve_model(model or None)
    topo = cpu_detect.detect()
    configs, facts = arm_configs(p, path, topo.usable)
    chosen = parse_arms(arms)
    peer_list = parse_peers(peers)
    visits = [(a, peer) for peer in peer_list for a in chosen]
    rng = np.random.default_rng(seed)
    order = runner.interleaved(visits, trials, rng)
    _progress(
        f"{len(chosen)} arms × {len(peer_list)} peer(s) × {trials} trials (+1 warm-up); "
        f"threads: {facts['recommendation']}; profile: {facts['profile']}"
    )
    vram = VramWatch()
    rows = []
    try:
        for i, v in enumerate(order):
            k, (arm, peer) = v.round, v.item
            cfg = configs[arm]
            user = companion.USER_TURNS[max(k, 0) % len(companion.USER_TURNS)]
            base = {
                "scenario": SCENARIO,
                "arm": arm,
                "peer": peer,
                "trial": k,
                "is_warmup": k < 0,
                "visit": i,
                **{f"cfg_{key}": value for key, value in cfg.__dict__.items()},
            }
            row, base["error"] = runner.attempt(turn, cfg, p, path, peer, user, vram)
            row = row or {}
            if base["error"]:
                _progress(f"{i + 1}/{len(order)} {arm} ({peer}): FAILED {base['error']}")
            rows.append({**base, **row})
            if row:
                _progress(
                    f"{i + 1}/{len(order)} {arm} ({peer}): ttft {row['ttft_ms']:.0f} ms, "
                    f"reply {row['e2e_ms']:.0f} ms, beat {row['beat_ms']:.0f} ms, "
                    f"frame p99 {row['frame_p99_ms']:.1f} ms"
                )
    finally:
        vram.close()
    df = pd.DataFrame(rows)
    runner.require_some(df, "turn")
    df["model_file"] = path.name
    df["usable_cpus"] = topo.usable
    df["threads_source"] = facts["recommendation"]
    df["profile_reason"] = facts["profile_reason"]
    df["vram_status"] = vram.status
    df["gpu_offload"] = llm_phase.gpu_offload_available()
    return df


# --- summaries (compute only) -----------------------------------------------------------------


def kept(df: pd.DataFrame) -> pd.DataFrame:
    return metrics.completed(df)


def trial_table(df: pd.DataFrame) -> pd.DataFrame:
    return kept(df)


def against_baseline(df: pd.DataFrame) -> pd.DataFrame:
    """Every arm against the baseline, per peer and metric: ratio of medians, CI, verdict."""
    d = kept(df)
    rows = []
    for peer, sub in d.groupby("peer", sort=True):
        base = sub[sub["arm"] == BASELINE]
        for arm in [a for a in ARMS if a != BASELINE and a in set(sub["arm"])]:
            other = sub[sub["arm"] == arm]
            for m in metrics.present("final", sub):
                if base[m.name].notna().sum() == 0 or other[m.name].notna().sum() == 0:
                    continue
                r = stats.compare(
                    base[m.name],
                    other[m.name],
                    higher_is_better=m.higher_is_better,
                    words=m.words,
                )
                rows.append(
                    {
                        "peer": peer,
                        "arm": arm,
                        "metric": m.name,
                        "baseline": r.median_a,
                        "arm_median": r.median_b,
                        "ratio": r.ratio,
                        "ci_low": r.ci_low,
                        "ci_high": r.ci_high,
                        "p_value": r.p_value,
                        "verdict": r.verdict,
                        "n": f"{r.n_a}+{r.n_b}",
                    }
                )
    return pd.DataFrame(rows)


ADD_UP_METRICS = ("ttft_ms", "e2e_ms", "tg_tps", "beat_ms", "frame_p99_ms")


def add_up(ab: pd.DataFrame) -> pd.DataFrame:
    """Do the single optimisations add up? Product of their ratios against the combination's.

    Independent effects multiply; a single optimisation with no effect contributes a ratio near
    1 (and its noise), so the product is read against the combination's CI.
    """
    rows = []
    for (peer, metric), sub in ab.groupby(["peer", "metric"], sort=False):
        if metric not in ADD_UP_METRICS:
            continue
        singles = sub[sub["arm"].isin(SINGLE)]
        combined = sub[sub["arm"] == OPTIMISED]
        if combined.empty or len(singles) < 2:
            continue
        rows.append(
            {
                "peer": peer,
                "metric": metric,
                "product of single ratios": float(np.prod(singles["ratio"])),
                "measured combination": float(combined["ratio"].iloc[0]),
                "combination CI": (
                    float(combined["ci_low"].iloc[0]),
                    float(combined["ci_high"].iloc[0]),
                ),
            }
        )
    return pd.DataFrame(rows)


DECLARATION = Phase(
    name="final",
    number=6,
    notebook=None,
    run=run,
    summarize=against_baseline,
    params=FinalParams,
    round_split=ROUND_SPLIT,
    trial_table=trial_table,
    sweep_metrics=None,
    representative=None,
    report="mateperf.reports.final",
)
