"""The final phase's measurement: each arm's settings, and one whole companion turn."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from mateperf import companion, host, model, progress, recommended_file, results, runner, workloads
from mateperf.companion_load import CompanionLoad
from mateperf.errors import ParameterError
from mateperf.phases.final.params import (
    BASELINE,
    OPTIMISED,
    FinalParams,
    parse_arms,
    parse_peers,
)
from mateperf.runner import Visit
from mateperf.trackers import cpu as cpu_detect
from mateperf.trackers.gpu import GpuMonitor
from mateperf.trackers.peaks import PeakRss, PeakVram
from mateperf.workloads import expression_sequence

SCENARIO = "turn"
ORIGINAL_THREADS = 6
ORIGINAL_GPU_LAYERS = 35  # the companion's `balanced` GPU profile
WANTED_PROFILE = "balanced"  # the tuned profile the arms take: the one the baseline runs


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
    type_k: str = "f16"
    type_v: str = "f16"


_progress = progress.reporter("final")


# --- each arm's settings ----------------------------------------------------------------------


def latest_recommendation(root: Path | None = None) -> tuple[dict | None, str]:
    """The newest recommended.json of a `mateperf tune` or cpu run that fits this host, and
    where it came from."""
    runs = results.list_runs(root, "tune") + results.list_runs(root, "cpu")
    for run in sorted(runs, key=lambda r: r.run_id, reverse=True):
        path = run.path / recommended_file.FILE_NAME
        if run.info.get("status") == results.STATUS_OK and path.is_file():
            try:
                return recommended_file.load(path), results.shown_path(path, root)
            except recommended_file.ConfigError as exc:
                return None, f"the newest {run.phase} run's recommendation does not fit: {exc}"
    return None, "no tune or cpu run with a recommended.json under the results root"


def tuned_choice(rec: dict) -> tuple[str, str]:
    """The tuned profile the final arms take, and what it stands for: balanced, the profile the
    baseline runs, where tune tuned it; else the file's default, said in one line."""
    if WANTED_PROFILE in rec["profiles"]:
        return WANTED_PROFILE, ""
    name = rec["default_profile"]
    missing = (
        f"the tuned file has no {WANTED_PROFILE} profile (tune tuned "
        f"{', '.join(rec['profiles'])}): "
        f"the tuned arms take {name} instead"
    )
    _progress(missing)
    return name, missing


def tuned_profile(rec: dict) -> tuple[dict, str, str, dict]:
    """A tuned file's profile (`tuned_choice`) as the profile arm's load settings:
    (params, name, why, every setting of that profile)."""
    name, missing = tuned_choice(rec)
    s = recommended_file.as_params(rec, name)
    params = {"n_gpu_layers": s["n_gpu_layers"], "offload_kqv": True, "flash_attn": s["flash_attn"]}
    why = f"measured by `mateperf tune` ({name}, this host)" + (f"; {missing}" if missing else "")
    return params, f"tuned {name}", why, s


def auto_profile(path: Path) -> tuple[dict, str, str]:
    """The GPU profile for this machine: (load parameters, profile, why).

    The gpu phase selects it (the fastest profile whose predicted VRAM fits the free VRAM with a
    margin); this phase takes the newest gpu run's choice made on this host for this model.
    Without GPU offload or a GPU there is nothing to select: cpu_fallback.
    """
    if not workloads.gpu_offload_available():
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


def arm_configs(p: FinalParams, path: Path, usable: int) -> tuple[dict[str, TurnConfig], dict]:
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
    if p.config:
        rec, rec_source = recommended_file.load(p.config), results.shown_path(p.config)
    else:
        rec, rec_source = latest_recommendation()
    tuned = baseline
    is_tuned = rec is not None and rec.get("format") == recommended_file.TUNED_FORMAT
    # a tuned file's threads, batch and KV come from the same profile as its layers
    params, profile, why, settings = tuned_profile(rec) if is_tuned else (*auto_profile(path), {})
    if rec is not None:
        threads = settings or recommended_file.as_params(rec)
        tuned = replace(baseline, **{k: threads[k] for k in recommended_file.SETTINGS})
    else:
        _progress(f"threads arm keeps the original threads: {rec_source}")
    kv = settings
    profiled = replace(
        baseline,
        n_gpu_layers=int(params.get("n_gpu_layers", 0)),
        offload_kqv=bool(params.get("offload_kqv", False)),
        flash_attn=bool(params.get("flash_attn", False)),
        profile=profile,
        type_k=kv.get("type_k", "f16"),
        type_v=kv.get("type_v", "f16"),
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
            type_k=profiled.type_k,
            type_v=profiled.type_v,
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


LIVE_PEER = "live"  # the peer column of turns measured on an attached avatar


def turn(cfg: TurnConfig, p: FinalParams, path: Path, peer: str, user: str, vram: PeakVram) -> dict:
    config = model.LlamaConfig.from_params({**p, **dataclasses.asdict(cfg)}, model_path=str(path))
    attached = p.avatar if peer == LIVE_PEER else ""
    load = CompanionLoad(
        "python" if attached else peer, p.fps, p.frame_busy, command_hz=0, avatar=attached
    )
    rss = PeakRss()
    with load as avatar, rss.track():
        with vram.track():
            llm, load_s = model.load(config)
            try:
                warmup_ms = 0.0
                if cfg.warmup:
                    warmup_ms = workloads.warm_up(llm, p.warmup_tokens, p.seed)
                beats = []

                def on_chunk(index: int, text: str) -> None:
                    if index % p.beat_chunks == 0:
                        beats.append(index)
                        avatar.send_beat(list(expression_sequence(len(beats))), cfg.batching)

                with avatar.window() as window:
                    reply = workloads.stream_reply(
                        llm, companion.chat_messages(user), p.max_tokens, p.seed, on_chunk
                    )
                    emotion = workloads.reply_emotion(reply["reply_text"])
                    beat = list(expression_sequence(len(beats) + 1, emotion))
                    avatar.send_beat(beat, cfg.batching)
            finally:
                model.close(llm)
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
        "frames": figures["frames"],
        "frame_first": figures["frame_first"],
        "frame_last": figures["frame_last"],
        "cpu_main_p99_ms": figures["cpu_main_p99_ms"],
        "gpu_p99_ms": figures["gpu_p99_ms"],
        "frame_note": figures["frame_note"],
        "timer_overshoot_us": figures["timer_overshoot_us"],
        "timer_resolution": figures["timer_resolution"],
        "peer_busy_share": figures["peer_busy_share"],
        "peer_awake_share": figures["peer_awake_share"],
        "cmd_errors": figures["cmd_errors"],
        "peak_rss_mb": rss.peak_mb,
        "peak_vram_mb": vram.peak_mb,
    }


# --- the phase --------------------------------------------------------------------------------


def _figures(_visit: Visit, row: dict) -> str:
    return (
        f"ttft {row['ttft_ms']:.0f} ms, reply {row['e2e_ms']:.0f} ms, "
        f"beat {row['beat_ms']:.0f} ms, frame p99 {row['frame_p99_ms']:.1f} ms"
    )


def run(**values) -> pd.DataFrame:
    """Every arm with every peer, interleaved per round after one warm-up turn."""
    p = FinalParams.from_values(values)
    path = model.resolve_model(p.model or None)
    topo = cpu_detect.detect()
    configs, facts = arm_configs(p, path, topo.usable)
    chosen = parse_arms(p.arms)
    # attached to a live avatar, that avatar is the one peer (its `peer` column says so)
    peer_list = [LIVE_PEER] if p.avatar else parse_peers(p.peers)
    visits = [(arm, peer) for peer in peer_list for arm in chosen]
    order = runner.interleaved(visits, p.trials, np.random.default_rng(p.seed))
    _progress(
        f"{len(chosen)} arms × {len(peer_list)} peer(s) × {p.trials} trials (+1 warm-up); "
        f"threads: {facts['recommendation']}; profile: {facts['profile']}"
    )

    def identity(v: Visit[tuple[str, str]]) -> dict:
        arm, peer = v.item
        cfg = {f"cfg_{key}": value for key, value in dataclasses.asdict(configs[arm]).items()}
        return {"scenario": SCENARIO, "arm": arm, "peer": peer, **cfg}

    def one(v: Visit[tuple[str, str]]) -> dict:
        arm, peer = v.item
        user = companion.USER_TURNS[max(v.round, 0) % len(companion.USER_TURNS)]
        return turn(configs[arm], p, path, peer, user, vram)

    vram = PeakVram()
    try:
        rows = runner.run_trials(
            "final", order, one, _figures, base=identity, label=lambda a: f"{a[0]} ({a[1]})"
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
    df["gpu_offload"] = workloads.gpu_offload_available()
    return df
