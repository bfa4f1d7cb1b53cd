"""The gpu phase's predictions, made before anything loads, both ways and labelled.

- the metadata method (`mateperf.gpu.estimate`): from the GGUF header, plus the device overhead
  measured on this device;
- llama.cpp's own projection (`mateperf.gpu.projection`): a no-allocation dry run in a child
  process, plus the same overhead.

Per n_gpu_layers, per KV cache type (`kv_check_rows`), for the target card (`target_card`) and
for a configuration of the selection or the fallback chain (`Predictor`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd

from mateperf.gpu import companion_profiles, estimate, profiles, projection, tinygguf
from mateperf.phases.gpu.analyse import (
    FIT_COLUMNS,
    SCENARIO_CPU_CHECK,
    SCENARIO_KV_CHECK,
    SCENARIO_PREDICTION,
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


def settings(params: dict) -> estimate.Settings:
    return estimate.Settings(
        n_ctx=params["n_ctx"],
        n_ubatch=params.get("n_ubatch") or params["n_batch"],
        offload_kqv=params["offload_kqv"],
        flash_attn=params["flash_attn"],
    )


def dry_config(params: dict, n_gpu_layers: int | None = None) -> dict:
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


def cfg_columns(params: dict, layout: estimate.Layout) -> dict:
    """The configuration a row is of, as stored (analyse.CONFIG_COLUMNS and the batch)."""
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


def fit_row(row: dict) -> dict:
    """A target-card row as stored: renamed, the card's size and margin left to the run facts."""
    return {FIT_COLUMNS.get(k, k): v for k, v in row.items() if k not in ("budget_mb", "margin_mb")}


def proj_columns(result: dict) -> dict:
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
    first, facts = projection.project(path, [dry_config(base, 0), dry_config(base, -1)])
    facts["note"] = ""
    by_k: dict[int, dict] = {0: first[0], all_k: first[1]}
    extra_results: list[dict] = []
    if facts["status"] != projection.OK:
        by_k = {k: first[0] for k in range(all_k + 1)}
        extra_results = [first[0]] * len(extra)
    elif facts["gpu_offload"]:
        middle = list(range(1, all_k))
        rest, more = projection.project(path, [dry_config(base, k) for k in middle] + extra)
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
            rest, more = projection.project(path, [dry_config(base, k) for k in middle])
            facts["seconds"] += more["seconds"]
            by_k.update(dict(zip(middle, rest, strict=True)))
        extra_results = [dict(first[0], status="no GPU device in this build")] * len(extra)
    return [by_k[k] for k in range(all_k + 1)], extra_results, facts


def prediction_rows(
    layout: estimate.Layout,
    base: dict,
    proj_rows: list[dict],
    overhead: estimate.Overhead,
    offload: bool,
) -> list[dict]:
    """One `prediction` row per layer count (both ways), and the `cpu_check` row: the metadata
    method for a CPU-only build against llama.cpp's host projection on this build."""
    s = settings(base)
    config = {
        c: v
        for c, v in cfg_columns(base, layout).items()
        if c not in ("gpu_layers", "cfg_n_gpu_layers")
    }
    rows = []
    for k, proj in enumerate(proj_rows):
        meta = estimate.predict(layout, k, s, overhead)
        o = meta["meta_overhead_mb"]
        rows.append(
            {
                "scenario": SCENARIO_PREDICTION,
                **meta,
                **proj_columns(proj),
                "proj_total_mb": proj["proj_device_mb"] + o if offload else math.nan,
                **config,
            }
        )
    cpu_meta = estimate.predict(layout, 0, s, gpu_build=False)
    rows.append(
        {
            "scenario": SCENARIO_CPU_CHECK,
            **{k: v for k, v in cpu_meta.items() if k.startswith("meta_host")},
            **proj_columns(proj_rows[0]),
        }
    )
    return rows


def kv_check_rows(path, layout: estimate.Layout, base: dict, offload: bool) -> list[dict]:
    """Per KV cache type pair and flash attention setting, the metadata method against
    llama.cpp's projection of the same configuration at all layers: on a CPU-only build both
    put everything on the host, on a CUDA build on the device."""
    variants = estimate.kv_variants()
    configs = [
        dry_config({**base, "type_k": k, "type_v": v, "flash_attn": fa}, -1)
        for k, v, fa in variants
    ]
    results, _ = projection.project(path, configs)
    rows = []
    for (type_k, type_v, fa), proj in zip(variants, results, strict=True):
        s = dataclasses.replace(settings(base), flash_attn=fa, type_k=type_k, type_v=type_v)
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
        effect = companion_profiles.effect(companion_profiles.PROFILES[name], layout, overhead)
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
                "intent_layers": effect.intent_layers,
                "intent_differs": effect.layers_differ,
                "intent_sentence": effect.sentence,
            }
        )
    return grid, pd.DataFrame(rows)


def companion_model_rows(
    model_path: str, work_dir: Path, overhead: estimate.Overhead, reserve_mb: float
) -> tuple[list[dict], dict]:
    """ "For the companion's model": its profiles as loaded, predicted with flash attention off
    and on, against the companion's 6 GB card less the avatar's reserve. From `model_path`
    (a real zephyr-7b-beta Q5_K_M, or any GGUF) where given, else from the generated Zephyr-7B
    Q5_K_M shape (its header alone, written into `work_dir` and removed after reading)."""
    if model_path:
        layout = estimate.read_layout(model_path)
        source = f"{Path(model_path).name} (the file given)"
    else:
        shape = tinygguf.write_shape_gguf(
            Path(work_dir) / "zephyr-7b-q5_k_m-shape.gguf", tinygguf.MISTRAL_7B_SHAPES, extend=False
        )
        try:
            layout = estimate.read_layout(shape)
        finally:
            shape.unlink(missing_ok=True)
        source = "the generated Zephyr-7B Q5_K_M shape (Mistral-7B, 32 blocks; header only)"
    rows = companion_profiles.model_rows(layout, overhead, reserve_mb=reserve_mb)
    return rows, {"cm_source": source, "cm_overhead_source": overhead.source}


@dataclasses.dataclass(frozen=True)
class Predictor:
    """Both predictions of one configuration of this model on this build and device.

    With the GPU hidden (cpu_fallback) nothing is on the device: 0 both ways. Without GPU
    offload llama.cpp projects nothing for the device (NaN).
    """

    path: Path
    layout: estimate.Layout
    overhead: estimate.Overhead
    offload: bool
    projection_ok: bool

    def meta(self, params: dict) -> dict:
        """The metadata prediction of `params`."""
        k = self.layout.resolve_layers(params["n_gpu_layers"])
        meta = estimate.predict(self.layout, k, settings(params), self.overhead)
        if params.get("hide_gpu"):
            device = [c for c in meta if c.startswith("meta_") and not c.startswith("meta_host")]
            meta.update(dict.fromkeys(device, 0.0))
        return meta

    def projected_total(self, params: dict, proj: dict) -> float:
        """llama.cpp's device projection `proj` of `params` plus the device overhead."""
        if params.get("hide_gpu"):
            return 0.0
        if not self.offload:
            return math.nan
        k = self.layout.resolve_layers(params["n_gpu_layers"])
        return proj["proj_device_mb"] + self.overhead.for_layers(self.layout, k, settings(params))

    def candidate(self, name: str, params: dict, proj: dict) -> profiles.Candidate:
        return profiles.Candidate(
            name, params, self.meta(params)["meta_total_mb"], self.projected_total(params, proj)
        )

    def step(self, params: dict) -> profiles.StepPrediction:
        """Both predictions for a step of the chain (a dry run of its own where needed)."""
        if params.get("hide_gpu"):
            return profiles.StepPrediction(0.0, 0.0, 0.0)
        meta = self.meta(params)
        if not self.offload or not self.projection_ok:
            return profiles.StepPrediction(meta["meta_total_mb"], math.nan, meta["meta_buffers_mb"])
        (proj,), _ = projection.project(self.path, [dry_config(params)])
        buffers = max(meta["meta_buffers_mb"], proj["proj_device_mb"])
        return profiles.StepPrediction(
            meta["meta_total_mb"], self.projected_total(params, proj), buffers
        )
