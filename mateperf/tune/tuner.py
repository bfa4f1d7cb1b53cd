"""`mateperf tune`: per companion profile, the fastest setting that keeps the avatar's frames.

1. Candidates per profile (mateperf.tune.space): pruned by the VRAM prediction against the
   card (`vram_budget_mb`, by default the companion's 6 GB RTX 4050) and by what this build
   can run, before anything is loaded.
2. A race per profile (mateperf.tune.race) under the avatar's load (mateperf.tune.trial):
   objective the time to a reply of fixed length, constraint the avatar's frame p99 within its
   frame (1000/fps ms); where nothing keeps the frame, the least overrun wins and the output
   says so. A setting measured for one profile's race is reused by another's (the same
   setting, the same host, the same run): its trials are not run twice.
3. A confirmation per profile: the pick, the race's runner-up and the companion's own profile
   (src/ai/config.py GPU_PROFILES, as far as this host can run it) measured again, interleaved,
   `confirm_reps` each: the evidence in recommended.json (ratios with CIs, rank test).
"""

from __future__ import annotations

import math
import time
from dataclasses import fields

import numpy as np
import pandas as pd

from mateperf import avatar as avatar_mod
from mateperf import avatar_pacing, model, progress, runner, stats, workloads
from mateperf.errors import RunAborted
from mateperf.frame_budget import FrameBudget, budget_fps
from mateperf.gpu import calibration, companion_profiles, estimate, profiles
from mateperf.host import usable_cpus
from mateperf.trackers.gpu import GpuMonitor, NvmlDevice
from mateperf.tune import race as race_mod
from mateperf.tune import space
from mateperf.tune.params import TuneParams
from mateperf.tune.trial import CONSTRAINT, OBJECTIVE, Bench

say = progress.reporter("tune")
FIGURES = (OBJECTIVE, "ttft_ms", "tg_tps", CONSTRAINT)
WORDS = {CONSTRAINT: ("lower", "higher")}  # a frame p99 is lower or higher, not faster
# The companion's thread count in every GPU profile, and in cpu_fallback (src/ai/config.py).
COMPANION_THREADS = {profiles.PERFORMANCE: 6, profiles.BALANCED: 6, profiles.CPU_FALLBACK: 8}


class Memo:
    """Trials by setting, shared by the races: a race asking for a setting's k-th trial gets
    the one already measured, if any, and a new one otherwise."""

    def __init__(self, bench: Bench):
        self.bench = bench
        self.trials: dict[str, list[dict]] = {}
        self.measured = 0

    def for_race(self, key: str):
        used: dict[str, int] = {}

        def measure(cand: race_mod.Candidate) -> dict:
            k = used.get(cand.label, 0)
            used[cand.label] = k + 1
            kept = self.trials.setdefault(cand.label, [])
            if k < len(kept):
                return {**kept[k], "reused": True}
            row = self.bench.measure(_setting(cand.settings))
            self.measured += 1
            kept.append(row)
            return {**row, "reused": False}

        return measure


def _setting(values: dict) -> space.Setting:
    return space.Setting(**{f.name: values[f.name] for f in fields(space.Setting)})


def device(p: TuneParams, offload: bool) -> tuple[estimate.Overhead, float, str]:
    """(device overhead, VRAM budget in MiB, where the budget comes from)."""
    monitor = GpuMonitor()
    try:
        if monitor.available and offload:
            overhead = calibration.overhead_for(monitor, True)
            free = monitor.read()["vram_free_mb"]
            budget, basis = profiles.available_vram(free, p.vram_budget_mb or None)
            return overhead, budget, basis
        if p.vram_budget_mb:
            return (
                estimate.REFERENCE_OVERHEAD,
                float(p.vram_budget_mb),
                f"a {p.vram_budget_mb} MiB card planned with the reference device overhead "
                f"({monitor.status if not monitor.available else 'no GPU offload in this build'})",
            )
        return estimate.REFERENCE_OVERHEAD, 0.0, f"no card: {monitor.status}"
    finally:
        monitor.close()


def companion_setting(
    rule: space.ProfileRule, usable: int, offload: bool
) -> tuple[space.Setting, str]:
    """The companion's own profile as this host can load it, and what had to change."""
    layers, n_ctx, n_batch = profiles.COMPANION_PROFILES[rule.name]
    threads = COMPANION_THREADS[rule.name]
    changes = []
    if threads > usable:
        changes.append(f"n_threads {threads} → {usable} (this host's usable CPUs)")
        threads = usable
    if layers and not offload:
        changes.append(f"n_gpu_layers {layers} → 0 (this build has no GPU offload)")
        layers = 0
    label = f"companion's {rule.name} (n_gpu_layers {layers}, n_ctx {n_ctx}, n_batch {n_batch})"
    return space.Setting(threads, threads, n_batch, layers, n_ctx), "; ".join(changes) or label


def confirm(bench: Bench, settings: dict[str, space.Setting], reps: int, seed: int) -> pd.DataFrame:
    """Every setting `reps` times, interleaved (a shuffled order per round), through the runner:
    a failed trial is a row with its error, and the comparison uses what succeeded."""
    rng = np.random.default_rng(seed)
    names = list(settings)
    visits = [
        runner.Visit(r, names[i], pos)
        for r in range(reps)
        for pos, i in enumerate(rng.permutation(len(names)))
    ]
    rows = runner.run_trials(
        "tune",
        visits,
        lambda v: bench.measure(settings[v.item]),
        lambda v, row: f"{settings[v.item].label}: {OBJECTIVE} {row[OBJECTIVE]:.0f} ms",
        base=lambda v: {"role": v.item, "label": settings[v.item].label, "position": v.position},
        label=lambda role: f"confirm {role}",
    )
    return pd.DataFrame(rows)


def evidence(trials: pd.DataFrame, against: str, metric: str, higher: bool) -> dict:
    ok = trials[trials["error"] == ""]
    pick = ok.loc[ok["role"] == "pick", metric].to_numpy(float)
    other = ok.loc[ok["role"] == against, metric].to_numpy(float)
    ab = stats.compare(other, pick, higher, words=WORDS.get(metric, (stats.FASTER, stats.SLOWER)))
    return {
        "against": against,
        "label": str(trials.loc[trials["role"] == against, "label"].iloc[0]),
        "metric": metric,
        "pick_median": _num(ab.median_b),
        "other_median": _num(ab.median_a),
        "ratio_pick_over_other": _num(ab.ratio),
        "ratio_ci95": [_num(ab.ci_low), _num(ab.ci_high)],
        "p_value": _num(ab.p_value),
        "verdict": ab.verdict,
        "n": [int(pick.size), int(other.size)],
    }


def _vram(ok: pd.DataFrame, pick: space.Setting, predicted: float) -> dict:
    """The pick's VRAM: measured by NVML in its confirmation trials where a GPU was read
    (the median of what each trial added), else the prediction, and which it is."""
    out = {"vram_predicted_mb": _num(predicted) if pick.n_gpu_layers else None}
    deltas = ok["vram_delta_mb"].dropna() if "vram_delta_mb" in ok else pd.Series(dtype=float)
    if len(deltas):
        basis = (
            f"measured: NVML, the median device memory {len(deltas)} confirmation trials added "
            "(in-process: a CUDA context from an earlier trial is not counted)"
        )
        return {**out, "vram_mb": _num(deltas.median()), "vram_basis": basis}
    if pick.n_gpu_layers:
        basis = "predicted (GGUF + device overhead): no GPU was read"
        return {**out, "vram_mb": _num(predicted), "vram_basis": basis}
    return {**out, "vram_mb": None, "vram_basis": "no layers on the GPU"}


def _num(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), 4)


def tune(p: TuneParams) -> tuple[dict, pd.DataFrame]:
    """The recommendation (recommended.json's profiles) and every trial as one frame."""
    start = time.perf_counter()
    path = model.resolve_model(p.model or None)
    layout = estimate.read_layout(path)
    offload = workloads.gpu_offload_available()
    overhead, budget, basis = device(p, offload)
    usable = usable_cpus()
    axes = p.axes()
    rules = p.rules()
    plans = {
        rule.name: space.candidates(
            rule, layout, usable, budget, p.margin_mb, offload, overhead, axes
        )
        for rule in rules
    }
    racing = {c.setting.label for cs in plans.values() for c in cs if not c.pruned}
    total = sum(len(cs) for cs in plans.values())
    pruned = sum(bool(c.pruned) for cs in plans.values() for c in cs)
    say(
        f"{total} settings over {len(plans)} profiles; {pruned} pruned before loading; "
        f"{len(racing)} distinct settings race; VRAM: {basis}"
    )
    say(profiles_sentence([r.name for r in rules]))
    # the companion's profiles whose layers are not what their comments say, on this model
    intent = companion_profiles.intent_sentences(layout, overhead)
    frames, out = [], {}
    vram = NvmlDevice() if offload else None  # VRAM is read where layers can go to a GPU
    with Bench(
        str(path), p.peer, p.fps, p.frame_busy, p.command_hz, p.reply_tokens, p.seed, vram, p.avatar
    ) as bench:
        identity = bench.identity
        # an attached avatar's own pacing target sets its frame budget where it reports one
        fps, fps_source = budget_fps(p.fps, identity)
        if identity is not None:
            say(avatar_mod.describe(identity.as_dict()))
        idle = bench.idle_frames()
        constraint = bench.constraint(idle)
        if identity is not None and not identity.frame_stats:
            constraint = None  # nothing to hold the settings to: the race is on speed alone
            say(f"frame p99: {identity.frames_unavailable}; the race ranks by speed alone")
        frame = FrameBudget(fps, p.frame_slack_ms, idle[CONSTRAINT], fps_source)
        say(f"{frame.describe()} over {idle['frames']} frames")
        pacing = avatar_pacing.summary(pd.DataFrame([idle]), fps, p.frame_busy)
        if not pacing["holds"]:
            say(f"WARNING: {avatar_pacing.sentence(pacing)}".replace("**", ""))
        if frame.idle_over:
            say(f"WARNING: {frame.idle_warning()}")
        memo = Memo(bench)
        try:
            for rule in rules:
                entry, trials = _profile(
                    p, rule, plans[rule.name], memo, bench, usable, offload, frame, constraint
                )
                if rule.name in intent:
                    entry["companion_intent"] = intent[rule.name]
                out[rule.name] = entry
                frames.append(trials)
        except RunAborted as exc:  # the trials measured so far are kept
            kept = [
                pd.DataFrame([{**r, "label": k} for r in rows]) for k, rows in memo.trials.items()
            ]
            partial = [pd.DataFrame(exc.rows)] if exc.rows else []  # a confirmation's
            exc.frame = pd.concat([*frames, *kept, *partial], ignore_index=True, sort=False)
            raise
        measured = memo.measured
    if vram is not None:
        vram.close()
    wall_s = time.perf_counter() - start
    say(f"done in {wall_s:.0f} s: {measured} race trials measured, the rest reused")
    rec = {
        "profiles": out,
        "default_profile": default_profile(list(out)),
        "model_file": path.name,
        **frame.record(),
        "constraint": constraint,
        "avatar": identity.as_dict() if identity is not None else None,
        "avatar_unavailable": _unavailable(idle, identity),
        # the avatar stand-in's timer and CPU, alone (avatar_pacing: did its pacing hold?)
        "avatar_pacing": {k: _num(v) if isinstance(v, float) else v for k, v in pacing.items()},
        "reply_tokens": p.reply_tokens,
        "vram_budget_mb": budget,
        "vram_basis": basis,
        "device_overhead": overhead.source,
        "gpu_offload": offload,
        "wall_s": round(wall_s, 1),
        "race_trials_measured": measured,
    }
    return rec, pd.concat(frames, ignore_index=True, sort=False)


def profiles_sentence(tuned: list[str]) -> str:
    """Which profiles this tune covers, and how to cover fewer or the rest (`-p profiles=`)."""
    left = [r.name for r in space.RULES if r.name not in tuned]
    if not left:
        return (
            f"tuning {', '.join(tuned)}; a companion that runs only its default profile: "
            f"-p profiles={profiles.BALANCED} (about a third of the time)"
        )
    return f"tuning {', '.join(tuned)}; not tuned: {', '.join(left)} (-p profiles= to add them)"


def default_profile(tuned: list[str]) -> str:
    """The profile `--config` applies: balanced, the companion's default, where it was tuned;
    else the first tuned."""
    return profiles.BALANCED if profiles.BALANCED in tuned else tuned[0]


def _unavailable(idle: dict, identity) -> list[str]:
    """What the attached avatar could not report (nothing for a spawned stand-in)."""
    if identity is None:
        return []
    if not identity.frame_stats:
        return [f"frame figures: {identity.frames_unavailable}"]
    return [idle["frame_note"]] if idle.get("frame_note") else []


def _profile(
    p, rule, plan, memo, bench, usable, offload, frame, constraint=CONSTRAINT
) -> tuple[dict, pd.DataFrame]:
    racing = [c for c in plan if not c.pruned]
    cands = [race_mod.Candidate(c.setting.label, c.setting.as_dict()) for c in racing]
    say(f"{rule.name}: {len(cands)} settings race ({len(plan) - len(cands)} pruned), {rule.note}")
    result = race_mod.race(
        cands,
        memo.for_race(rule.name),
        OBJECTIVE,
        higher_is_better=False,
        constraint=constraint,
        budget=frame.budget_ms if constraint else None,
        max_rounds=p.max_rounds,
        min_reps=min(p.min_reps, p.max_rounds),
        halve_every=1,
        eta=p.eta,
        seed=p.seed,
        on_progress=lambda text: say(f"{rule.name} {text}"),
    )
    pick = _setting(result.winner.settings)
    own, own_note = companion_setting(rule, usable, offload)
    roles = {"pick": pick}
    if result.runner_up is not None:
        roles["runner_up"] = _setting(result.runner_up.settings)
    if own.label not in {s.label for s in roles.values()}:
        roles["companion"] = own
    checked = confirm(bench, roles, p.confirm_reps, p.seed + 1)
    ok = checked[(checked["role"] == "pick") & (checked["error"] == "")]
    measured = (*FIGURES, constraint) if constraint and constraint not in FIGURES else FIGURES
    figures = {m: _num(ok[m].median()) if len(ok) else None for m in measured}
    held = figures.get(constraint or CONSTRAINT)
    predicted = next(c.predicted_vram_mb for c in plan if c.setting == pick)
    entry = {
        "settings": pick.as_dict(),
        "measured": {**figures, **_vram(ok, pick, predicted)},
        "meets_frame_budget": frame.keeps(held),
        "constraint": constraint,
        "rule": rule.note,
        "race": {
            "settings": len(plan),
            "pruned": {c.setting.label: c.pruned for c in plan if c.pruned},
            "raced": len(cands),
            "trials": result.total_trials,
            "rounds": result.rounds,
            "note": result.note,
            "dropped": [
                {"label": d.label, "round": d.round, "reason": d.reason} for d in result.dropped
            ],
        },
        "evidence": [
            evidence(checked, role, metric, higher)
            for role in roles
            if role != "pick"
            for metric, higher in ((OBJECTIVE, False), (CONSTRAINT, False))
        ],
        "companion_profile": own_note,
        # which confirmed role the companion's own setting is (the pick or runner-up when equal)
        "companion_role": next(r for r, st in roles.items() if st.label == own.label),
    }
    if not result.met_constraint:
        entry["note"] = frame.none_kept("in the race") + (
            f"; its confirmation trials' median frame p99, {figures[CONSTRAINT]} ms, is within "
            "it: it sits at the edge of the budget on this host"
            if entry["meets_frame_budget"]
            else ""
        )
    elif not entry["meets_frame_budget"]:
        entry["note"] = (
            f"the pick kept {frame.budget_ms:.2f} ms by its race trials' median, but its "
            f"confirmation trials' median frame p99 is {figures[CONSTRAINT]} ms: it sits at the "
            "edge of the budget on this host"
        )
    trials = pd.concat(
        [result.trials.assign(stage="race"), checked.assign(stage="confirm")],
        ignore_index=True,
        sort=False,
    ).assign(profile=rule.name)
    return entry, trials
