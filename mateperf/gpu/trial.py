"""One measured trial of a configuration: load, first reply, prompt and generation tokens/s.

`run_trial(config, work, isolate=True)` runs it in a child process, which the GPU measurements
need for two reasons:
- the CUDA context a process creates stays until the process ends, so in one process only the
  first load would pay for it; a fresh process per trial makes every trial a replicate of what
  the companion pays when it starts, and a device-wide NVML reading taken by the parent before
  the child starts is a clean baseline;
- running out of VRAM inside a CUDA kernel launch or a pool allocation aborts the process in
  llama.cpp; in a child that is a failed attempt with a reason, not a lost run.
`isolate=False` runs the same function in this process (a CPU-only build has no CUDA state,
and a child per trial would add a second of start-up to each).

Failures never raise: the result has `ok` False, the `stage` (load or work) and `error`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mateperf import companion, model, workloads
from mateperf.trackers.gpu import GpuMonitor

NAN = float("nan")


def work_spec(
    max_tokens: int = 16,
    pp_tokens: int = 128,
    tg_tokens: int = 32,
    user_turn: int = 0,
    seed: int = 1234,
) -> dict:
    """What a trial does after the load: a companion reply (0 = none), then pp and tg tests."""
    return {
        "max_tokens": int(max_tokens),
        "pp_tokens": int(pp_tokens),
        "tg_tokens": int(tg_tokens),
        "user_turn": int(user_turn),
        "seed": int(seed),
    }


def empty_result() -> dict:
    return {
        "ok": False,
        "stage": "",
        "error": "",
        "load_s": NAN,
        "ttft_ms": NAN,
        "e2e_ms": NAN,
        "prompt_tokens": NAN,
        "gen_tokens": NAN,
        "pp_tps": NAN,
        "tg_tps": NAN,
        "vram_loaded_mb": NAN,
        "vram_after_mb": NAN,
        "vram_process_mb": NAN,
        "gpu_offload": None,
        "cuda_visible_devices": None,
        "wall_s": NAN,
    }


def measure(config: dict, work: dict) -> dict:
    """Load `config` (LlamaConfig fields), do `work`; NVML readings after load and after work."""
    out = empty_result()
    out["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    start = time.perf_counter()
    reader = GpuMonitor()
    try:
        out["gpu_offload"] = workloads.gpu_offload_available()
        cfg = model.LlamaConfig(**config)
        out["stage"] = "load"
        llm, out["load_s"] = model.load(cfg)
        loaded = reader.read()
        out["vram_loaded_mb"] = loaded["vram_used_mb"]
        out["stage"] = "work"
        try:
            if work["max_tokens"]:
                user = companion.USER_TURNS[work["user_turn"] % len(companion.USER_TURNS)]
                reply = workloads.stream_reply(
                    llm, companion.chat_messages(user), work["max_tokens"], work["seed"]
                )
                for key in ("ttft_ms", "e2e_ms", "prompt_tokens", "gen_tokens"):
                    out[key] = reply[key]
            rng = np.random.default_rng(work["seed"])
            if work["pp_tokens"] or work["tg_tokens"]:
                # llama-bench's warm-up: every weight, the KV cache and the compute buffers
                # (the CUDA pools) touched once at the measured batch size
                workloads.bench_warm_up(llm, work["pp_tokens"], cfg.n_batch, rng)
            if work["pp_tokens"]:
                seconds = workloads.bench_pp(llm, work["pp_tokens"], cfg.n_batch, rng)
                out["pp_tps"] = work["pp_tokens"] / seconds
            if work["tg_tokens"]:
                seconds = workloads.bench_tg(llm, work["tg_tokens"], rng)
                out["tg_tps"] = work["tg_tokens"] / seconds
            after = reader.read()
            out["vram_after_mb"] = after["vram_used_mb"]
            out["vram_process_mb"] = after["vram_process_mb"]
        finally:
            model.close(llm)
        out["ok"] = True
        out["stage"] = "done"
    except Exception as exc:  # a failed load or run is a result here, not an error
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        reader.close()
        out["wall_s"] = time.perf_counter() - start
    return out


def run_trial(
    config: dict,
    work: dict,
    isolate: bool = True,
    timeout_s: float = 600.0,
    hide_gpu: bool = False,
) -> dict:
    """`measure` in a child process (isolate) or here; never raises.

    hide_gpu: run the child with CUDA_VISIBLE_DEVICES empty, so llama.cpp sees no GPU at all.
    n_gpu_layers=0 alone is not a CPU fallback on a CUDA build: llama.cpp still creates a CUDA
    context and, with op_offload, runs batched products on the GPU from a compute buffer there.
    """
    if not isolate:
        return measure(config, work)
    from mateperf.gpu.child import run_module

    with tempfile.TemporaryDirectory(prefix="mateperf-trial-") as tmp:
        spec, result = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({"config": config, "work": work}), encoding="utf-8")
        env = {"CUDA_VISIBLE_DEVICES": ""} if hide_gpu else None
        args = [str(spec), str(result)]
        child = run_module("mateperf.gpu.trial", args, Path(tmp), timeout_s, env)
        if result.is_file():
            return json.loads(result.read_text(encoding="utf-8"))
    out = empty_result()
    out["stage"] = "child"
    out["error"] = f"trial process {child.describe() or 'wrote no result'}"
    return out


def _child(spec_path: str, result_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    result = measure(spec["config"], spec["work"])
    tmp = Path(result_path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    tmp.replace(result_path)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2]))
