"""The gpu phase's measuring: predict both ways, select a profile, walk the fallback chain,
then measure the trials, with the NVML monitor sampling the device throughout.

`run(**values)` takes the phase's parameters (`GpuParams`) and returns the tidy frame whose
scenarios the package docstring lists.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mateperf import model, progress, runner, workloads
from mateperf.gpu import calibration, estimate, profiles, projection, trial
from mateperf.phases.gpu import predict
from mateperf.phases.gpu.analyse import (
    MEASURED_SCENARIOS,
    SCENARIO_ALERT,
    SCENARIO_ATTEMPT,
    SCENARIO_COMPANION_MODEL,
    SCENARIO_FIT,
    SCENARIO_LAYERS,
    SCENARIO_PROFILE,
    SCENARIO_SAMPLE,
    SCENARIO_SELECTION,
    SCENARIO_TARGET,
)
from mateperf.phases.gpu.params import GpuParams
from mateperf.trackers.gpu import GpuMonitor, Thresholds

REFERENCE = estimate.REFERENCE_OVERHEAD
# The run's own settings, which every profile is resolved from.
BASE_PARAMS = ("n_ctx", "n_batch", "n_ubatch", "n_threads", "n_gpu_layers", "offload_kqv")
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

_progress = progress.reporter("gpu")


def _alert_progress(event: dict) -> None:
    _progress(
        f"VRAM {event['level']}: {event['vram_used_mb']:.0f} MiB = {event['used_pct']:.0f}% "
        f"of the {event['basis']} ({event['basis_mb']:.0f} MiB)"
    )


def run(isolate: bool | None = None, **values) -> pd.DataFrame:
    """Measure the phase with `values` (the GpuParams fields); the tidy frame of every scenario.

    `isolate`: each trial in a fresh child process; by default where the build offloads to a
    GPU (mateperf.gpu.trial says why), in this process otherwise.
    """
    p = GpuParams.from_values(values, what="gpu")
    path = model.resolve_model(p.model or None)
    layout = estimate.read_layout(path)
    base = {name: p[name] for name in (*BASE_PARAMS, "flash_attn")}
    monitor = GpuMonitor(
        interval_ms=p.monitor_interval_ms,
        thresholds=Thresholds(p.warn_pct, p.critical_pct),
        budget_mb=p.vram_budget_mb or None,
        callbacks=[_alert_progress],
    )
    monitor.start()
    try:
        rows, facts = _run(p, path, layout, base, monitor, isolate)
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


def _offload_available() -> bool:
    """GPU offload when no dry-run child could tell (it imports llama_cpp here)."""
    try:
        return workloads.gpu_offload_available()
    except Exception:  # no usable llama_cpp here: nothing offloads
        return False


@dataclass(frozen=True)
class Bench:
    """Where a trial runs: the model, the monitor that reads VRAM around it, child or not."""

    monitor: GpuMonitor
    path: Path
    seed: int
    isolate: bool

    def measure(self, params: dict, work: dict) -> dict:
        """One trial with the device-wide VRAM it added: NVML before the trial (this process
        has no CUDA context) against the trial's own readings after load and after the work."""
        config = {
            "model_path": str(self.path),
            "n_ctx": params["n_ctx"],
            "n_batch": params["n_batch"],
            "n_ubatch": params.get("n_ubatch", 0),
            "n_threads": params.get("n_threads", 0),
            "n_gpu_layers": params["n_gpu_layers"],
            "offload_kqv": params["offload_kqv"],
            "flash_attn": params["flash_attn"],
            "seed": self.seed,
        }
        before = self.monitor.sample_now()
        t0 = self.monitor.now_s()
        hide = bool(params.get("hide_gpu"))
        result = trial.run_trial(config, work, isolate=self.isolate, hide_gpu=hide)
        t1 = self.monitor.now_s()
        self.monitor.sample_now()
        base = before["vram_used_mb"]
        result["vram_before_mb"] = base
        result["vram_loaded_delta_mb"] = result["vram_loaded_mb"] - base
        result["vram_delta_mb"] = result["vram_after_mb"] - base
        result["vram_peak_delta_mb"] = self.monitor.peak_used_mb(t0, t1) - base
        result["t_start_s"], result["t_end_s"] = t0, t1
        return result


def _run(
    p: GpuParams,
    path: Path,
    layout: estimate.Layout,
    base: dict,
    monitor: GpuMonitor,
    isolate: bool | None,
) -> tuple[list[dict], dict]:
    resolved = {
        name: profiles.resolve(prof, layout.all_layers, base)
        for name, prof in profiles.PROFILES.items()
    }
    _progress(f"{monitor.status}; dry runs for n_gpu_layers 0..{layout.all_layers}")
    proj_rows, proj_profiles, pfacts = predict.project_layers(
        path, layout, base, [predict.dry_config(resolved[n]) for n in profiles.ORDER]
    )
    offload = pfacts["gpu_offload"]
    if offload is None:
        offload = _offload_available()
    overhead = calibration.overhead_for(monitor, offload)
    _progress(
        f"llama.cpp projection: {pfacts['status']} ({pfacts['seconds']:.1f} s); "
        f"device overhead: {overhead.source}"
    )
    predictor = predict.Predictor(
        path, layout, overhead, offload, pfacts["status"] == projection.OK
    )

    rows = predict.prediction_rows(layout, base, proj_rows, overhead, offload)
    rows += predict.kv_check_rows(path, layout, base, offload)
    card_rows, card_facts = _target_card(p, layout, base, monitor, overhead)
    rows += card_rows

    candidates = [
        predictor.candidate(name, resolved[name], proj)
        for name, proj in zip(profiles.ORDER, proj_profiles, strict=True)
    ]
    selection = profiles.select_profile(
        candidates,
        free_mb=monitor.read()["vram_free_mb"],
        budget_mb=p.vram_budget_mb or None,
        margin_mb=p.margin_mb,
        gpu_status=monitor.status,
        gpu_available=monitor.available,
        gpu_offload=offload,
        requested=p.profile,
    )
    for c, row in zip(
        sorted(candidates, key=lambda c: profiles.ORDER.index(c.profile)),
        selection.rows,
        strict=True,
    ):
        rows.append(
            {"scenario": SCENARIO_SELECTION, **row, **predict.cfg_columns(c.params, layout)}
        )
    _progress(f"selected profile: {selection.chosen} ({selection.basis})")

    isolate = offload if isolate is None else isolate
    bench = Bench(monitor, path, p.seed, isolate)
    attempts = _walk_chain(p, bench, predictor, selection, resolved, offload)
    for a in attempts:
        rows.append(
            {"scenario": SCENARIO_ATTEMPT, **a.row(), **predict.cfg_columns(a.params, layout)}
        )
        _progress(f"attempt {a.index} {a.step} ({a.profile}): {a.reason}")

    # each arm with llama.cpp's projection plus the overhead: the run's own configuration from
    # its layer count's dry run, a profile from the selection's
    own = math.nan
    if offload:
        k = layout.resolve_layers(base["n_gpu_layers"])
        own = proj_rows[k]["proj_device_mb"] + predictor.meta(base)["meta_overhead_mb"]
    arms = [(SCENARIO_LAYERS, "", base, own)]
    if monitor.available and offload and p.compare_profiles:
        projected = {c.profile: c.projected_mb for c in candidates}
        fitting = [r["profile"] for r in selection.rows if r["fits"]]
        arms += [(SCENARIO_PROFILE, n, resolved[n], projected[n]) for n in fitting]
    rows += _trials(p, bench, predictor, arms)

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
        **card_facts,
        "selected_profile": selection.chosen,
        "selection_forced": selection.forced,
        "selection_basis": selection.basis,
        "vram_available_mb": selection.available_mb,
        "final_profile": attempts[-1].profile if attempts else "",
        "final_ok": bool(attempts and attempts[-1].ok),
        "threads_used": model.LlamaConfig.from_params(p, model_path="-").threads,
    }
    return rows, facts


def _target_card(
    p: GpuParams,
    layout: estimate.Layout,
    base: dict,
    monitor: GpuMonitor,
    overhead: estimate.Overhead,
) -> tuple[list[dict], dict]:
    """The target card's rows (`fit`, `target`) and facts: the card is `vram_budget_mb`, else
    the free VRAM, else the companion's 6 GB; the overhead this device's, else the reference."""
    budget = p.vram_budget_mb or monitor.read()["vram_free_mb"]
    card = "budget" if p.vram_budget_mb else "free VRAM"
    if math.isnan(budget):
        budget, card = profiles.COMPANION_CARD_MB, "the companion's 6 GB card (no budget, no GPU)"
    plan_overhead = overhead if not math.isnan(overhead.attention_mb) else REFERENCE
    n_ubatch = predict.settings(base).n_ubatch
    grid, companion = predict.target_card(layout, budget, p.margin_mb, plan_overhead, n_ubatch)
    rows = [{"scenario": SCENARIO_FIT, **predict.fit_row(r)} for r in grid.to_dict("records")]
    rows += [
        {"scenario": SCENARIO_TARGET, **predict.fit_row(r)} for r in companion.to_dict("records")
    ]
    with tempfile.TemporaryDirectory(prefix="mateperf-shape-") as work:
        cm_rows, cm_facts = predict.companion_model_rows(
            p.companion_model, Path(work), plan_overhead, p.avatar_reserve_mb
        )
    rows += [{"scenario": SCENARIO_COMPANION_MODEL, **r} for r in cm_rows]
    facts = {
        **cm_facts,
        "target_budget_mb": float(budget),
        "target_margin_mb": float(p.margin_mb),
        "target_card": card,
        "target_overhead_source": plan_overhead.source,
    }
    return rows, facts


def _walk_chain(
    p: GpuParams,
    bench: Bench,
    predictor: predict.Predictor,
    selection: profiles.Selection,
    resolved: dict[str, dict],
    offload: bool,
) -> list[profiles.Attempt]:
    """The fallback chain from the chosen profile, each step predicted before it loads."""

    def attempt(params: dict) -> dict:
        result = bench.measure(params, trial.work_spec(0, 0, 8, seed=p.seed))
        if not offload and params["n_gpu_layers"] != 0:
            result["note"] = "on the CPU: this build has no GPU offload"
        return result

    all_layers = predictor.layout.all_layers
    chain = profiles.fallback_chain(selection.chosen, resolved[selection.chosen], all_layers)
    # what a step may use: the selection's (free VRAM, capped by a budget); with no GPU to read,
    # an emulated card's budget still stands, so the chain is walked as it would be on that card
    limit = selection.available_mb
    if math.isnan(limit) and p.vram_budget_mb:
        limit = float(p.vram_budget_mb)
    return profiles.walk(chain, attempt, predictor.step, limit, p.margin_mb)


def _trials(
    p: GpuParams,
    bench: Bench,
    predictor: predict.Predictor,
    arms: list[tuple[str, str, dict, float]],
) -> list[dict]:
    """A warm-up round, then `trials` rounds; each round visits every arm (scenario, profile,
    load parameters, llama.cpp's projection plus overhead) in a seeded random order. Every arm
    is warmed up: each loads its own layer split, whose first mapping the warm-up pays for.
    A trial that fails is a row like any other (`ok` False, its `stage` and `error`)."""
    visits = runner.interleaved(arms, p.trials, np.random.default_rng(p.seed), warm_every=True)

    def identity(visit: runner.Visit) -> dict:
        scenario, name, params, projected_mb = visit.item
        meta = predictor.meta(params)
        return {
            "scenario": scenario,
            "profile": name,
            "round_position": visit.position,
            **predict.cfg_columns(params, predictor.layout),
            "pred_meta_total_mb": meta["meta_total_mb"],
            "pred_meta_buffers_mb": meta["meta_buffers_mb"],
            "pred_proj_total_mb": projected_mb,
        }

    def one(visit: runner.Visit) -> dict:
        params = visit.item[2]
        work = trial.work_spec(p.max_tokens, p.pp_tokens, p.tg_tokens, visit.round + 1, p.seed)
        result, error = runner.attempt(bench.measure, params, work)
        if result is None:  # the trial's own failures are results; this one escaped it
            result = {**trial.empty_result(), "stage": "trial", "error": error}
        return {c: result.get(c) for c in _RESULT_COLUMNS}

    return runner.run_trials(
        "gpu",
        visits,
        one,
        lambda _visit, row: _describe(row),
        base=identity,
        label=lambda arm: f"{arm[0]} {arm[1]}".strip(),
    )


def _describe(result: dict) -> str:
    if not result["ok"]:
        return f"FAILED {result['error']}"
    vram = result["vram_delta_mb"]
    vram_text = "" if math.isnan(vram) else f", VRAM {vram:.0f} MiB"
    return f"load {result['load_s']:.2f} s, tg {result['tg_tps']:.1f} tok/s{vram_text}"
