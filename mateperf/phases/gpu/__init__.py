"""Phase 5 "gpu": how many layers fit on the GPU, and how to avoid VRAM crashes.

Scenarios (one tidy frame; `scenario` says what a row is):
- `prediction`: one row per n_gpu_layers from 0 to all (n_layer + 1): the VRAM predicted from
  the GGUF metadata (mateperf.gpu.estimate; weights, KV cache, compute buffers, the measured
  device overhead) and llama.cpp's own projection from a no-allocation dry run
  (mateperf.gpu.projection), both labelled, never mixed.
- `cpu_check`: the metadata method's prediction for a CPU-only build against llama.cpp's host
  projection on this build: the one check of the method a machine without a GPU can make.
- `kv_check`: the same comparison (on a CUDA build: the device at all layers) for every KV
  cache type pair and flash attention setting (estimate.kv_variants).
- `fit` / `target`: the target card (`vram_budget_mb`, else the free VRAM, else the companion's
  6 GB): every n_ctx × KV cache type × n_gpu_layers predicted, and the companion's own profiles
  (COMPANION_PROFILES) with what each costs; the overhead is this device's where measured, else
  the H200 reference, labelled.
- `selection`: each profile with its prediction, what is available (free VRAM, or an emulated
  `vram_budget_mb`), whether it fits with `margin_mb`, and which one was chosen.
- `attempt`: the fallback chain walked from the chosen profile, every step with its
  prediction and the reason it was skipped unloaded (predicted not to fit), left (failed, or
  measured over the limit), or that it loaded.
- `layers`: measured trials of the run's own n_gpu_layers (what a sweep varies): load,
  time to first token of a companion reply, pp and tg tokens/s, and NVML's device VRAM
  before/after/peak. `profile`: the same for every profile that fits, when a GPU is present.
  Round 0 is a warm-up, left out; each round visits the arms in a seeded random order.
- `sample` / `alert`: the GPU monitor's timeline and its threshold events.

Without an NVIDIA GPU the phase still predicts (both ways), selects (which ends at
cpu_fallback), walks the chain and measures the CPU, and every row says why no GPU was measured.
On a CUDA build each trial runs in a fresh child process (mateperf.gpu.trial explains why).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from mateperf import metrics, model, progress, stats
from mateperf.gpu import calibration, estimate, profiles, projection, trial
from mateperf.phases.declaration import Phase
from mateperf.phases.gpu.params import GpuParams
from mateperf.trackers.gpu import GpuMonitor, Thresholds

REFERENCE = estimate.REFERENCE_OVERHEAD

SCENARIO_PREDICTION = "prediction"
SCENARIO_CPU_CHECK = "cpu_check"
SCENARIO_KV_CHECK = "kv_check"
SCENARIO_FIT = "fit"
SCENARIO_TARGET = "target"
SCENARIO_SELECTION = "selection"
SCENARIO_ATTEMPT = "attempt"
SCENARIO_LAYERS = "layers"
SCENARIO_PROFILE = "profile"
SCENARIO_SAMPLE = "sample"
SCENARIO_ALERT = "alert"
MEASURED_SCENARIOS = (SCENARIO_LAYERS, SCENARIO_PROFILE)
ROUND_SPLIT = ("trials",)  # what a sweep's rounds divide among them

TRIAL_METRICS = ["load_s", "ttft_ms", "e2e_ms", "pp_tps", "tg_tps", "vram_delta_mb"]
# Measured VRAM is within target of a prediction if off by at most this share or MiB.
TARGET_SHARE, TARGET_MB = 0.10, 64.0


_progress = progress.reporter("gpu")


def _alert_progress(event: dict) -> None:
    _progress(
        f"VRAM {event['level']}: {event['vram_used_mb']:.0f} MiB = {event['used_pct']:.0f}% "
        f"of the {event['basis']} ({event['basis_mb']:.0f} MiB)"
    )


def _settings(params: dict) -> estimate.Settings:
    return estimate.Settings(
        n_ctx=params["n_ctx"],
        n_ubatch=params.get("n_ubatch") or params["n_batch"],
        offload_kqv=params["offload_kqv"],
        flash_attn=params["flash_attn"],
    )


def _dry_config(params: dict, n_gpu_layers: int | None = None) -> dict:
    return projection.dry_run_config(
        params["n_gpu_layers"] if n_gpu_layers is None else n_gpu_layers,
        params["n_ctx"],
        params["n_batch"],
        params.get("n_ubatch") or params["n_batch"],
        params["offload_kqv"],
        params["flash_attn"],
        params.get("type_k", "f16"),
        params.get("type_v", "f16"),
    )


# The configuration columns that make a measurement and a prediction the same configuration.
CONFIG_COLUMNS = (
    "gpu_layers",
    "cfg_n_ctx",
    "cfg_n_ubatch",
    "cfg_offload_kqv",
    "cfg_flash_attn",
    "cfg_type_k",
    "cfg_type_v",
    "cfg_hide_gpu",
)
# Context sizes of the target-card table (up to the model's training context).
FIT_N_CTX = (512, 1024, 2048, 4096, 8192, 16384, 32768)
# KV cache variants of the target-card table: f16 without and with flash attention, then the
# quantised caches (both K and V), which need it.
FIT_KV = (
    ("f16", "f16", False),
    ("f16", "f16", True),
    ("q8_0", "q8_0", True),
    ("q4_0", "q4_0", True),
)


# The target-card rows' columns under names no parameter has (`n_ctx` is one: the tidy frame
# carries every parameter as a column, which a row's own n_ctx would shadow).
FIT_COLUMNS = {
    "n_ctx": "fit_n_ctx",
    "type_k": "fit_type_k",
    "type_v": "fit_type_v",
    "flash_attn": "fit_flash_attn",
    "fits": "fits_card",
}


def _fit_row(row: dict) -> dict:
    """A target-card row as stored: renamed, the card's size and margin left to the run facts."""
    return {FIT_COLUMNS.get(k, k): v for k, v in row.items() if k not in ("budget_mb", "margin_mb")}


def fit_frames(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(grid, companion profiles) of a stored run, under target_card's column names."""
    back = {v: k for k, v in FIT_COLUMNS.items()}
    out = []
    for scenario in (SCENARIO_FIT, SCENARIO_TARGET):
        rows = df[df["scenario"] == scenario] if "scenario" in df else df.iloc[:0]
        # the parameters of the same names (n_ctx, flash_attn) and the selection's `fits` go
        rows = rows.drop(columns=[c for c in back.values() if c in rows.columns])
        rows = rows.rename(columns=back)
        if len(rows):
            rows = rows.assign(
                budget_mb=rows["target_budget_mb"],
                margin_mb=rows["target_margin_mb"],
                fits=rows["fits"].map(lambda v: None if pd.isna(v) else bool(v)),
            )
        out.append(rows.reset_index(drop=True))
    return out[0], out[1]


def kv_check_rows(path, layout: estimate.Layout, base: dict, offload: bool) -> list[dict]:
    """Per KV cache type pair and flash attention setting, the metadata method against
    llama.cpp's projection of the same configuration at all layers: on a CPU-only build both
    put everything on the host, on a CUDA build on the device."""
    variants = estimate.kv_variants()
    configs = [
        _dry_config({**base, "type_k": k, "type_v": v, "flash_attn": fa}, -1)
        for k, v, fa in variants
    ]
    results, _ = projection.project(path, configs)
    rows = []
    for (type_k, type_v, fa), proj in zip(variants, results, strict=True):
        s = dataclasses.replace(_settings(base), flash_attn=fa, type_k=type_k, type_v=type_v)
        if offload:
            meta = estimate.predict(layout, -1, s)
            m = (meta["meta_weights_mb"], meta["meta_kv_mb"], meta["meta_compute_mb"])
            pr = ("proj_device_model_mb", "proj_device_context_mb", "proj_device_compute_mb")
        else:
            meta = estimate.predict(layout, 0, s, gpu_build=False)
            m = (
                meta["meta_host_weights_mb"],
                meta["meta_host_kv_mb"],
                meta["meta_host_compute_mb"],
            )
            pr = ("proj_host_model_mb", "proj_host_context_mb", "proj_host_compute_mb")
        rows.append(
            {
                "scenario": SCENARIO_KV_CHECK,
                "kv_type_k": type_k,
                "kv_type_v": type_v,
                "kv_flash_attn": fa,
                "kv_where": "device, all layers" if offload else "host (CPU-only build)",
                "kv_meta_weights_mb": m[0],
                "kv_meta_kv_mb": m[1],
                "kv_meta_compute_mb": m[2],
                "kv_proj_weights_mb": proj[pr[0]],
                "kv_proj_kv_mb": proj[pr[1]],
                "kv_proj_compute_mb": proj[pr[2]],
                "proj_status": proj["status"],
            }
        )
    return rows


def target_card(
    layout: estimate.Layout,
    budget_mb: float,
    margin_mb: float,
    overhead: estimate.Overhead,
    n_ubatch: int = 512,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(grid, companion) for a card of `budget_mb`: every n_ctx (up to the model's training
    context) × KV cache variant × n_gpu_layers, and the companion's own profiles, predicted.
    A profile's n_gpu_layers above the model's layers means all of them, as in llama.cpp."""
    limit = layout.n_ctx_train or max(FIT_N_CTX)
    n_ctxs = [c for c in FIT_N_CTX if c <= limit] or [min(FIT_N_CTX)]
    grid = estimate.fit_grid(layout, budget_mb, margin_mb, overhead, n_ctxs, list(FIT_KV), n_ubatch)
    rows = []
    for name, (ngl, n_ctx, n_batch) in profiles.COMPANION_PROFILES.items():
        k = layout.resolve_layers(ngl)
        s = estimate.Settings(n_ctx=n_ctx, n_ubatch=n_batch)
        meta = estimate.predict(layout, k, s, overhead)
        total = meta["meta_total_mb"]
        rows.append(
            {
                "profile": name,
                "cfg_n_gpu_layers": ngl,
                "gpu_layers": k,
                "cfg_n_ctx": n_ctx,
                "cfg_n_batch": n_batch,
                "meta_weights_mb": meta["meta_weights_mb"],
                "meta_kv_mb": meta["meta_kv_mb"],
                "meta_compute_mb": meta["meta_compute_mb"],
                "meta_buffers_mb": meta["meta_buffers_mb"],
                "meta_overhead_mb": meta["meta_overhead_mb"],
                "meta_total_mb": total,
                "meta_host_mb": meta["meta_host_mb"],
                "budget_mb": budget_mb,
                "margin_mb": margin_mb,
                "fits": None if math.isnan(total) else bool(total + margin_mb <= budget_mb),
            }
        )
    return grid, pd.DataFrame(rows)


def _proj_columns(result: dict) -> dict:
    return {k: v for k, v in result.items() if k.startswith("proj_")} | {
        "proj_status": result["status"],
        "proj_devices": " | ".join(
            f"{name} {m}+{c}+{u}" for name, (m, c, u) in result["devices"].items()
        ),
    }


def project_layers(
    path, layout: estimate.Layout, base: dict, extra: list[dict]
) -> tuple[list[dict], list[dict], dict]:
    """llama.cpp's projection for every layer count and for `extra` configs.

    The first child dry-runs 0 and all layers and learns whether the build offloads at all.
    In a CPU-only build llama.cpp assigns every layer to the CPU whatever n_gpu_layers says,
    so where those two agree one dry run stands for every count (each dry run costs about a
    second on the default model: its 262k-token vocabulary is read every time).
    """
    all_k = layout.all_layers
    first, facts = projection.project(path, [_dry_config(base, 0), _dry_config(base, -1)])
    facts["note"] = ""
    by_k: dict[int, dict] = {0: first[0], all_k: first[1]}
    extra_results: list[dict] = []
    if facts["status"] != projection.OK:
        by_k = {k: first[0] for k in range(all_k + 1)}
        extra_results = [first[0]] * len(extra)
    elif facts["gpu_offload"]:
        middle = list(range(1, all_k))
        rest, more = projection.project(path, [_dry_config(base, k) for k in middle] + extra)
        facts["seconds"] += more["seconds"]
        by_k.update(dict(zip(middle, rest[: len(middle)], strict=True)))
        extra_results = rest[len(middle) :]
    else:
        same = first[0]["devices"] == first[1]["devices"] and first[0]["status"] == projection.OK
        if same:
            facts["note"] = (
                "CPU-only build: llama.cpp placed everything on the host at 0 and at all "
                "layers alike, so that one dry run stands for every layer count"
            )
            by_k = {k: first[0] for k in range(all_k + 1)} | {all_k: first[1]}
        else:
            middle = list(range(1, all_k))
            rest, more = projection.project(path, [_dry_config(base, k) for k in middle])
            facts["seconds"] += more["seconds"]
            by_k.update(dict(zip(middle, rest, strict=True)))
        extra_results = [dict(first[0], status="no GPU device in this build")] * len(extra)
    return [by_k[k] for k in range(all_k + 1)], extra_results, facts


def _offload_fallback() -> bool:
    """Offload support when no dry-run child could tell (it imports llama_cpp here)."""
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:
        return False


def _measure(monitor: GpuMonitor, params: dict, config: dict, work: dict, isolate: bool) -> dict:
    """One trial with the device-wide VRAM it added: NVML before the trial (this process has
    no CUDA context) against the trial's own readings after load and after the work."""
    before = monitor.sample_now()
    t0 = monitor.now_s()
    hide = bool(params.get("hide_gpu"))
    result = trial.run_trial(config, work, isolate=isolate, hide_gpu=hide)
    t1 = monitor.now_s()
    monitor.sample_now()
    base = before["vram_used_mb"]
    result["vram_before_mb"] = base
    result["vram_loaded_delta_mb"] = result["vram_loaded_mb"] - base
    result["vram_delta_mb"] = result["vram_after_mb"] - base
    result["vram_peak_delta_mb"] = monitor.peak_used_mb(t0, t1) - base
    result["t_start_s"], result["t_end_s"] = t0, t1
    return result


def _config(path, params: dict, seed: int) -> dict:
    return {
        "model_path": str(path),
        "n_ctx": params["n_ctx"],
        "n_batch": params["n_batch"],
        "n_ubatch": params.get("n_ubatch", 0),
        "n_threads": params.get("n_threads", 0),
        "n_gpu_layers": params["n_gpu_layers"],
        "offload_kqv": params["offload_kqv"],
        "flash_attn": params["flash_attn"],
        "seed": seed,
    }


def _cfg_columns(params: dict, layout: estimate.Layout) -> dict:
    return {
        "gpu_layers": layout.resolve_layers(params["n_gpu_layers"]),
        "cfg_n_gpu_layers": params["n_gpu_layers"],
        "cfg_n_ctx": params["n_ctx"],
        "cfg_n_batch": params["n_batch"],
        "cfg_n_ubatch": params.get("n_ubatch") or params["n_batch"],
        "cfg_offload_kqv": params["offload_kqv"],
        "cfg_flash_attn": params["flash_attn"],
        "cfg_type_k": params.get("type_k", "f16"),
        "cfg_type_v": params.get("type_v", "f16"),
        "cfg_hide_gpu": bool(params.get("hide_gpu", False)),
    }


_RESULT_COLUMNS = (
    "ok",
    "stage",
    "error",
    "load_s",
    "ttft_ms",
    "e2e_ms",
    "prompt_tokens",
    "gen_tokens",
    "pp_tps",
    "tg_tps",
    "vram_before_mb",
    "vram_loaded_delta_mb",
    "vram_delta_mb",
    "vram_peak_delta_mb",
    "vram_process_mb",
    "t_start_s",
    "t_end_s",
)


def run(
    model: str = "",  # noqa: A002 - the parameter name users type
    n_gpu_layers: int = -1,
    n_ctx: int = 2048,
    n_batch: int = 512,
    n_ubatch: int = 0,
    offload_kqv: bool = True,
    flash_attn: bool = False,
    n_threads: int = 0,
    profile: str = "auto",
    vram_budget_mb: int = 0,
    margin_mb: int = 512,
    warn_pct: float = 80.0,
    critical_pct: float = 90.0,
    trials: int = 4,
    max_tokens: int = 16,
    pp_tokens: int = 128,
    tg_tokens: int = 32,
    monitor_interval_ms: float = 100.0,
    compare_profiles: bool = True,
    seed: int = 1234,
    isolate: bool | None = None,
) -> pd.DataFrame:
    p = GpuParams(**locals()).as_dict()
    from mateperf import model as model_mod

    path = model_mod.resolve_model(model or None)
    layout = estimate.read_layout(path)
    base = {
        "n_ctx": n_ctx,
        "n_batch": n_batch,
        "n_ubatch": n_ubatch,
        "n_threads": n_threads,
        "n_gpu_layers": n_gpu_layers,
        "offload_kqv": offload_kqv,
        "flash_attn": flash_attn,
    }
    monitor = GpuMonitor(
        interval_ms=monitor_interval_ms,
        thresholds=Thresholds(warn_pct, critical_pct),
        budget_mb=vram_budget_mb or None,
        callbacks=[_alert_progress],
    )
    monitor.start()
    try:
        rows, facts = _run(p, path, layout, base, monitor)
    finally:
        monitor.stop()
    device = monitor.device()
    rows += [{"scenario": SCENARIO_SAMPLE, **r} for r in monitor.samples().to_dict("records")]
    rows += [{"scenario": SCENARIO_ALERT, **r} for r in monitor.alerts().to_dict("records")]
    monitor.close()
    df = pd.DataFrame(rows)
    df["model_name"] = layout.name
    df["model_file"] = path.name
    df["n_layer"] = layout.n_layer
    df["all_layers"] = layout.all_layers
    df["gpu_available"] = device["available"]
    df["gpu_status"] = device["status"]
    df["gpu_name"] = device["name"]
    df["gpu_total_mb"] = device["vram_total_mb"]
    df["gpu_driver"] = device["driver_version"]
    df["gpu_cuda"] = device["cuda_driver_version"]
    for key, value in facts.items():
        df[key] = value
    # what ran on the GPU: a build without offload runs every layer on the CPU
    ran = df["scenario"].isin([*MEASURED_SCENARIOS, SCENARIO_ATTEMPT])
    effective = df["gpu_layers"] if facts["gpu_offload"] else 0
    df["gpu_layers_effective"] = np.where(ran, effective, np.nan)
    return df


def _run(p: dict, path, layout: estimate.Layout, base: dict, monitor: GpuMonitor):
    settings = _settings(base)
    resolved = {
        name: profiles.resolve(prof, layout.all_layers, base)
        for name, prof in profiles.PROFILES.items()
    }
    _progress(f"{monitor.status}; dry runs for n_gpu_layers 0..{layout.all_layers}")
    proj_rows, proj_profiles, pfacts = project_layers(
        path, layout, base, [_dry_config(resolved[n]) for n in profiles.ORDER]
    )
    offload = pfacts["gpu_offload"]
    if offload is None:
        offload = _offload_fallback()
    overhead = calibration.overhead_for(monitor, offload)
    _progress(
        f"llama.cpp projection: {pfacts['status']} ({pfacts['seconds']:.1f} s); "
        f"device overhead: {overhead.source}"
    )

    rows: list[dict] = []
    for k, proj in enumerate(proj_rows):
        meta = estimate.predict(layout, k, settings, overhead)
        o = meta["meta_overhead_mb"]
        rows.append(
            {
                "scenario": SCENARIO_PREDICTION,
                **meta,
                **_proj_columns(proj),
                "proj_total_mb": proj["proj_device_mb"] + o if offload else math.nan,
                **{
                    c: v
                    for c, v in _cfg_columns(base, layout).items()
                    if c not in ("gpu_layers", "cfg_n_gpu_layers")
                },
            }
        )
    cpu_meta = estimate.predict(layout, 0, settings, gpu_build=False)
    rows.append(
        {
            "scenario": SCENARIO_CPU_CHECK,
            **{k: v for k, v in cpu_meta.items() if k.startswith("meta_host")},
            **_proj_columns(proj_rows[0]),
        }
    )
    rows += kv_check_rows(path, layout, base, offload)
    budget = p["vram_budget_mb"] or monitor.read()["vram_free_mb"]
    card = "budget" if p["vram_budget_mb"] else "free VRAM"
    if math.isnan(budget):
        budget, card = profiles.COMPANION_CARD_MB, "the companion's 6 GB card (no budget, no GPU)"
    plan_overhead = overhead if not math.isnan(overhead.attention_mb) else REFERENCE
    grid, companion = target_card(layout, budget, p["margin_mb"], plan_overhead, settings.n_ubatch)
    rows += [{"scenario": SCENARIO_FIT, **_fit_row(r)} for r in grid.to_dict("records")]
    rows += [{"scenario": SCENARIO_TARGET, **_fit_row(r)} for r in companion.to_dict("records")]

    def meta_total(params: dict) -> float:
        return meta_prediction(params)["meta_total_mb"]

    def meta_prediction(params: dict) -> dict:
        """The metadata prediction of `params`; the GPU hidden (cpu_fallback) needs nothing."""
        k = layout.resolve_layers(params["n_gpu_layers"])
        meta = estimate.predict(layout, k, _settings(params), overhead)
        if params.get("hide_gpu"):
            device = [c for c in meta if c.startswith("meta_") and not c.startswith("meta_host")]
            meta.update(dict.fromkeys(device, 0.0))
        return meta

    def projected_total(params: dict, proj: dict) -> float:
        if params.get("hide_gpu"):
            return 0.0
        if not offload:
            return math.nan
        k = layout.resolve_layers(params["n_gpu_layers"])
        return proj["proj_device_mb"] + overhead.for_layers(layout, k, _settings(params))

    candidates = [
        profiles.Candidate(
            name, resolved[name], meta_total(resolved[name]), projected_total(resolved[name], proj)
        )
        for name, proj in zip(profiles.ORDER, proj_profiles, strict=True)
    ]
    free_mb = monitor.read()["vram_free_mb"]
    selection = profiles.select_profile(
        candidates,
        free_mb=free_mb,
        budget_mb=p["vram_budget_mb"] or None,
        margin_mb=p["margin_mb"],
        gpu_status=monitor.status,
        gpu_available=monitor.available,
        gpu_offload=offload,
        requested=p["profile"],
    )
    for c, row in zip(
        sorted(candidates, key=lambda c: profiles.ORDER.index(c.profile)),
        selection.rows,
        strict=True,
    ):
        rows.append({"scenario": SCENARIO_SELECTION, **row, **_cfg_columns(c.params, layout)})
    _progress(f"selected profile: {selection.chosen} ({selection.basis})")

    isolate = offload if p["isolate"] is None else p["isolate"]
    seed = p["seed"]
    projected_by_profile = {c.profile: c.projected_mb for c in candidates}

    def predict_step(params: dict) -> profiles.StepPrediction:
        """Both predictions for a step of the chain (a dry run of its own where needed)."""
        if params.get("hide_gpu"):
            return profiles.StepPrediction(0.0, 0.0, 0.0)
        meta = meta_prediction(params)
        if not offload or pfacts["status"] != projection.OK:
            return profiles.StepPrediction(meta["meta_total_mb"], math.nan, meta["meta_buffers_mb"])
        (proj,), _ = projection.project(path, [_dry_config(params)])
        buffers = max(meta["meta_buffers_mb"], proj["proj_device_mb"])
        return profiles.StepPrediction(
            meta["meta_total_mb"], projected_total(params, proj), buffers
        )

    def attempt(params: dict) -> dict:
        work = trial.work_spec(0, 0, 8, seed=seed)
        result = _measure(monitor, params, _config(path, params, seed), work, isolate)
        if not offload and params["n_gpu_layers"] != 0:
            result["note"] = "on the CPU: this build has no GPU offload"
        return result

    chain = profiles.fallback_chain(selection.chosen, resolved[selection.chosen], layout.all_layers)
    # what a step may use: the selection's (free VRAM, capped by a budget); with no GPU to read,
    # an emulated card's budget still stands, so the chain is walked as it would be on that card
    limit = selection.available_mb
    if math.isnan(limit) and p["vram_budget_mb"]:
        limit = float(p["vram_budget_mb"])
    attempts = profiles.walk(chain, attempt, predict_step, limit, p["margin_mb"])
    for a in attempts:
        rows.append({"scenario": SCENARIO_ATTEMPT, **a.row(), **_cfg_columns(a.params, layout)})
        _progress(f"attempt {a.index} {a.step} ({a.profile}): {a.reason}")

    arms = [(SCENARIO_LAYERS, "", base)]
    if monitor.available and offload and p["compare_profiles"]:
        fitting = [r["profile"] for r in selection.rows if r["fits"]]
        arms += [(SCENARIO_PROFILE, name, resolved[name]) for name in fitting]
    rng = np.random.default_rng(seed)
    total = (p["trials"] + 1) * len(arms)
    done = 0
    for r in range(p["trials"] + 1):
        order = rng.permutation(len(arms))
        for position, i in enumerate(order):
            scenario, name, params = arms[int(i)]
            work = trial.work_spec(p["max_tokens"], p["pp_tokens"], p["tg_tokens"], r, seed)
            result = _measure(monitor, params, _config(path, params, seed), work, isolate)
            k = layout.resolve_layers(params["n_gpu_layers"])
            meta = meta_prediction(params)
            proj_total = (
                proj_rows[k]["proj_device_mb"] + meta["meta_overhead_mb"]
                if scenario == SCENARIO_LAYERS and offload
                else projected_by_profile.get(name, math.nan)
            )
            rows.append(
                {
                    "scenario": scenario,
                    "profile": name,
                    "trial": r - 1,
                    "is_warmup": r == 0,
                    "round_position": position,
                    **_cfg_columns(params, layout),
                    **{c: result.get(c) for c in _RESULT_COLUMNS},
                    "pred_meta_total_mb": meta["meta_total_mb"],
                    "pred_meta_buffers_mb": meta["meta_buffers_mb"],
                    "pred_proj_total_mb": proj_total,
                }
            )
            done += 1
            label = f"{scenario} {name}".strip()
            if result["ok"]:
                vram = result["vram_delta_mb"]
                vram_text = "" if math.isnan(vram) else f", VRAM {vram:.0f} MiB"
                _progress(
                    f"trial {done}/{total} {label}: load {result['load_s']:.2f} s, "
                    f"tg {result['tg_tps']:.1f} tok/s{vram_text}"
                )
            else:
                _progress(f"trial {done}/{total} {label}: FAILED {result['error']}")

    facts = {
        "gpu_offload": bool(offload),
        "trial_isolation": "child process per trial" if isolate else "in process",
        "projection_status": pfacts["status"],
        "projection_library": pfacts["library"],
        "projection_note": pfacts["note"],
        "projection_s": pfacts["seconds"],
        "overhead_none_mb": overhead.none_mb,
        "overhead_attention_mb": overhead.attention_mb,
        "overhead_none_fa_mb": overhead.none_fa_mb,
        "overhead_attention_fa_mb": overhead.attention_fa_mb,
        "overhead_source": overhead.source,
        "target_budget_mb": float(budget),
        "target_margin_mb": float(p["margin_mb"]),
        "target_card": card,
        "target_overhead_source": plan_overhead.source,
        "selected_profile": selection.chosen,
        "selection_forced": selection.forced,
        "selection_basis": selection.basis,
        "vram_available_mb": selection.available_mb,
        "final_profile": attempts[-1].profile if attempts else "",
        "final_ok": bool(attempts and attempts[-1].ok),
        "threads_used": model.LlamaConfig(model_path="-", n_threads=p["n_threads"]).threads,
    }
    return rows, facts


# --- summaries (compute only) -----------------------------------------------------------------


def kept(df: pd.DataFrame) -> pd.DataFrame:
    return metrics.without_warmup(df)


def measured(df: pd.DataFrame) -> pd.DataFrame:
    """Trials that count (warm-ups and failed trials out) of the measured scenarios."""
    d = metrics.completed(df)
    return d[d["scenario"].isin(MEASURED_SCENARIOS)]


def prediction_table(df: pd.DataFrame) -> pd.DataFrame:
    return (
        df[df["scenario"] == SCENARIO_PREDICTION].sort_values("gpu_layers").reset_index(drop=True)
    )


def gpu_measured(df: pd.DataFrame) -> bool:
    """Whether any trial measured VRAM on a GPU."""
    d = measured(df)
    return "vram_delta_mb" in d and bool(d["vram_delta_mb"].notna().any())


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per measured scenario and profile: summary of every trial metric (warm-ups out)."""
    d = measured(df)
    if d.empty:
        return pd.DataFrame()
    present = [m for m in TRIAL_METRICS + ["vram_peak_delta_mb"] if m in d and d[m].notna().any()]
    return stats.summary_table(d, ["scenario", "profile", "gpu_layers"], present)


def _config_keys(d: pd.DataFrame) -> list[str]:
    """The configuration columns a frame has (older runs lack the KV cache types)."""
    return [c for c in CONFIG_COLUMNS if c in d.columns]


def measured_vs_predicted(df: pd.DataFrame) -> pd.DataFrame:
    """Median measured VRAM per configuration against both predictions, with the error and
    whether it is within target (10% of the measurement or 64 MiB, whichever is larger).

    A row is one configuration (layers, context, batch, KV placement and types, flash
    attention, GPU hidden or not), so a profile is never set against another's prediction.
    With the GPU hidden (cpu_fallback) the prediction is 0 on the device, whatever an older
    run stored."""
    d = measured(df)
    if d.empty or not gpu_measured(df):
        return pd.DataFrame()
    keys = ["scenario", "profile", *_config_keys(d)]
    rows = []
    for key, g in d.groupby(keys, sort=True, dropna=False):
        vram = g["vram_delta_mb"].dropna()
        if vram.empty:
            continue
        config = dict(zip(keys, key, strict=True))
        hidden = bool(config.get("cfg_hide_gpu", False))
        m = float(np.median(vram))
        tolerance = max(TARGET_SHARE * m, TARGET_MB)
        row = {**config, "gpu_layers": int(config["gpu_layers"]), "n": len(vram)}
        row["measured_mb"] = m
        for label, col in (("meta", "pred_meta_total_mb"), ("proj", "pred_proj_total_mb")):
            pred = 0.0 if hidden else (float(g[col].iloc[0]) if col in g else math.nan)
            row[f"{label}_mb"] = pred
            row[f"{label}_error_mb"] = pred - m
            row[f"{label}_within_target"] = (
                bool(abs(pred - m) <= tolerance) if not math.isnan(pred) else None
            )
        row["tolerance_mb"] = tolerance
        rows.append(row)
    return pd.DataFrame(rows)


def base_config(df: pd.DataFrame) -> dict:
    """The run's own configuration, the one every prediction row is for: from the prediction
    rows' configuration columns, or (older runs) from the run's parameters."""
    pred = df[df["scenario"] == SCENARIO_PREDICTION]
    first = pred.iloc[0] if len(pred) else df.iloc[0]
    n_batch = int(first["n_batch"]) if "n_batch" in first else 512
    n_ubatch = int(first["n_ubatch"]) if "n_ubatch" in first and first["n_ubatch"] else n_batch

    def pick(column: str, param: str, default):
        if column in first and not pd.isna(first[column]):
            return first[column]
        return first[param] if param in first and not pd.isna(first[param]) else default

    return {
        "cfg_n_ctx": int(pick("cfg_n_ctx", "n_ctx", 2048)),
        "cfg_n_ubatch": int(pick("cfg_n_ubatch", "n_ubatch", n_ubatch) or n_ubatch),
        "cfg_offload_kqv": bool(pick("cfg_offload_kqv", "offload_kqv", True)),
        "cfg_flash_attn": bool(pick("cfg_flash_attn", "flash_attn", False)),
        "cfg_type_k": str(pick("cfg_type_k", "type_k", "f16")),
        "cfg_type_v": str(pick("cfg_type_v", "type_v", "f16")),
        "cfg_hide_gpu": False,
    }


def measured_at_base(df: pd.DataFrame) -> dict[int, float]:
    """Median measured VRAM per n_gpu_layers, of trials with exactly the configuration the
    prediction rows are for (a profile's other context, KV placement or flash attention is
    left out): what the per-layer table and plot put beside the predictions."""
    d = measured(df)
    if d.empty or "vram_delta_mb" not in d or not d["vram_delta_mb"].notna().any():
        return {}
    base = base_config(df)
    keep = pd.Series(True, index=d.index)
    for column, value in base.items():
        if column in d.columns:
            keep &= d[column].fillna(value if column.startswith("cfg_type") else False) == value
        elif column.startswith("cfg_type") and value != "f16":
            keep &= False  # an older run measured f16 only
    d = d[keep]
    if d.empty:
        return {}
    medians = d.groupby("gpu_layers")["vram_delta_mb"].median().dropna()
    return {int(k): float(v) for k, v in medians.items()}


def profile_comparison(df: pd.DataFrame) -> pd.DataFrame:
    """Every measured profile against the selected one (or, where that was not measured, the
    run's own configuration): ratio of medians with its CI and the verdict, per metric."""
    d = measured(df)
    profile_rows = d[d["scenario"] == SCENARIO_PROFILE]
    if profile_rows.empty:
        return pd.DataFrame()
    chosen = str(df["selected_profile"].iloc[0])
    ref = profile_rows[profile_rows["profile"] == chosen]
    against = chosen
    if ref.empty:
        ref = d[d["scenario"] == SCENARIO_LAYERS]
        against = f"n_gpu_layers={int(ref['cfg_n_gpu_layers'].iloc[0])}" if len(ref) else ""
    if ref.empty:
        return pd.DataFrame()
    rows = []
    names = [n for n in profiles.ORDER if n in set(profile_rows["profile"]) and n != against]
    for name in names:
        other = profile_rows[profile_rows["profile"] == name]
        for metric_name in ("tg_tps", "pp_tps", "ttft_ms", "vram_delta_mb"):
            decl = metrics.get("gpu", metric_name) or metrics.find(metric_name)
            r = stats.compare(
                ref[metric_name],
                other[metric_name],
                higher_is_better=decl.higher_is_better,
                words=decl.words,
            )
            rows.append({"profile": name, "against": against, "metric": metric_name, **r.as_dict()})
    return pd.DataFrame(rows)


def failures(df: pd.DataFrame) -> list[str]:
    """Why the run's own configuration could not be measured (empty if it could)."""
    d = kept(df)
    layers = d[d["scenario"] == SCENARIO_LAYERS]
    if layers.empty or layers["ok"].fillna(False).astype(bool).any():
        return []
    errors = layers["error"].dropna().unique()
    k = int(layers["cfg_n_gpu_layers"].iloc[0])
    return [f"every trial of n_gpu_layers={k} failed: {'; '.join(map(str, errors))}"]


def check(df: pd.DataFrame) -> None:
    """Raise if no trial of the run's configuration succeeded (call after saving the frame,
    so the run directory keeps the predictions and the recorded failures)."""
    problems = failures(df)
    if problems:
        raise RuntimeError(problems[0])


def sweep_metrics(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str]]:
    """What a sweep of this phase plots: the run's own configuration (`layers`) per point."""
    d = kept(df)
    layers = d[d["scenario"] == SCENARIO_LAYERS]
    specs = [
        ("generation tokens/s (tg)", layers, "tg_tps"),
        ("prompt tokens/s (pp)", layers, "pp_tps"),
        ("time to first token (ms)", layers, "ttft_ms"),
        ("model load (s)", layers, "load_s"),
    ]
    if "vram_delta_mb" in layers and layers["vram_delta_mb"].notna().any():
        specs.append(("VRAM in use, NVML (MiB)", layers, "vram_delta_mb"))
    return [s for s in specs if s[2] in s[1] and s[1][s[2]].notna().any()]


DECLARATION = Phase(
    name="gpu",
    number=5,
    notebook=None,
    run=run,
    summarize=summarize,
    params=GpuParams,
    round_split=ROUND_SPLIT,
    trial_table=None,
    sweep_metrics=sweep_metrics,
    representative=None,
    report="mateperf.reports.gpu",
)
