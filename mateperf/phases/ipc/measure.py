"""The ipc phase's measurement: fresh peers per trial, every chosen scenario once per trial.

Trials run through `mateperf.runner.run_trials`: one that fails (a peer that dies, a request
lost or timed out, counters that disagree) is one row with its `error` and no measurements, and
the next trial starts on fresh processes. A trial is kept or dropped whole: its counters check
vouches for all of its scenarios, and a partial trial would leave arms with unequal trials.
"""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import pandas as pd

from mateperf import progress, runner
from mateperf.avatar import AvatarUnreachable
from mateperf.bridge.attach import AvatarLost
from mateperf.bridge.client import BridgeDisconnected
from mateperf.errors import RunAborted
from mateperf.phases.ipc.lab import Lab, skipped
from mateperf.phases.ipc.params import IpcParams, parse_scenarios
from mateperf.phases.ipc.rows import COLUMNS, METRICS, PHASE, REQUEST_FIELDS
from mateperf.phases.ipc.scenarios import SCENARIO_RUNNERS
from mateperf.trackers import cpu as cpu_tracker

_progress = progress.reporter(PHASE)


class ScenarioFailed(RuntimeError):
    """A scenario raised inside a trial: which one, and its error (the trial is recorded)."""

    def __init__(self, scenario: str, error: Exception):
        super().__init__(f"{scenario}: {type(error).__name__}: {error}")
        self.scenario = scenario


def run(**values) -> pd.DataFrame:
    """Measure every chosen scenario: request rows and one trial row per arm and trial."""
    p = IpcParams.from_values(values)
    chosen = parse_scenarios(p.scenarios)
    left_out: dict[str, str] = {}
    if p.avatar:
        from mateperf.bridge.attach import connect_avatar

        bridge, identity = connect_avatar(p.avatar, p.timeout_s)
        bridge.close()
        left_out = skipped(p, identity)
        chosen = [s for s in chosen if s not in left_out]
        for what, why in left_out.items():
            _progress(f"live avatar: {what} left out: {why}")
    with ExitStack() as stack:
        if p.pin_cpu >= 0:
            before, _ = cpu_tracker.affinity()
            cpu_tracker.set_affinity({p.pin_cpu})
            stack.callback(cpu_tracker.set_affinity, before)
            _progress(f"client, peers and floor pinned to CPU {p.pin_cpu}")
        checked = "on a live avatar" if p.avatar else "the peers' counters match the client's"
        try:
            rows = runner.run_trials(
                PHASE,
                [runner.Visit(k, k) for k in range(p.trials)],
                lambda visit: _trial(p, chosen, visit.round),
                lambda visit, row: f"{len(chosen)} scenario(s), {checked}",
                label=lambda k: "trial",
            )
        except RunAborted as exc:  # the rows of the trials before it are kept
            exc.frame = _frame(pd.DataFrame(exc.rows), p, left_out, require=False)
            raise
    return _frame(pd.DataFrame(rows), p, left_out)


def _trial(p: IpcParams, chosen: list[str], trial: int) -> list[dict]:
    """One trial: its own floor and peers, every chosen scenario in turn, the counters checked."""
    # Fresh processes and connections per trial: a trial then replicates what a run would
    # (where the scheduler puts each thread, the frame loop's phase, the JIT), so variation
    # between runs shows up between trials instead of as a difference.
    delay = f", {p.apply_delay_ms:g} ms per applied command" if p.apply_delay_ms else ""
    rows: list[dict] = []
    with ExitStack() as stack:
        if p.avatar:
            _progress(f"trial {trial + 1}/{p.trials}: floor, and the live avatar at {p.avatar}")
        else:
            _progress(
                f"trial {trial + 1}/{p.trials}: starting floor and {p.peer} peers "
                f"(fps 0 and {p.fps:g}{delay})"
            )
        try:
            lab = Lab(stack, p)
        except AvatarUnreachable as exc:  # it answered when the run began: it went away
            raise AvatarLost(p.avatar, exc) from exc
        for scenario in chosen:
            _progress(f"{scenario} trial {trial + 1}/{p.trials}")
            try:
                for arm in SCENARIO_RUNNERS[scenario](lab, p):
                    rows += arm.rows(scenario)
            except BridgeDisconnected as exc:
                if lab.attached:  # the live avatar went away: the run ends here
                    raise AvatarLost(p.avatar, exc) from exc
                raise ScenarioFailed(scenario, exc) from exc
            except Exception as exc:
                raise ScenarioFailed(scenario, exc) from exc
        lab.check_counters()
    return [{**row, **lab.pacing} for row in rows]


def _frame(
    df: pd.DataFrame, p: IpcParams, left_out: dict[str, str], require: bool = True
) -> pd.DataFrame:
    """The stored frame: the run's settings on every row, metrics as floats, the stored order
    (the runner's `visit` is left out: one visit per trial, it repeats `trial`); `skipped`
    names what an attached run left out and why."""
    if require:
        runner.require_some(df, "ipc trial")
    for col in ("is_warmup", "error"):
        if col not in df:
            df[col] = False if col == "is_warmup" else ""
    df["skipped"] = "; ".join(f"{k}: {v}" for k, v in left_out.items())
    df["peer"] = "live" if p.avatar else p.peer
    df["pin_cpu"] = p.pin_cpu
    df["apply_delay_ms"] = p.apply_delay_ms
    df["is_warmup"] = df["is_warmup"].astype(bool)
    for col in (*METRICS, *REQUEST_FIELDS):
        df[col] = df[col].astype(float) if col in df else np.nan
    df["command"] = df["command"].fillna("") if "command" in df else ""
    for col, empty in (("timer_overshoot_us", np.nan), ("timer_resolution", "")):
        df[col] = df[col].fillna(empty) if col in df else empty
    df["timer_overshoot_us"] = df["timer_overshoot_us"].astype(float)
    return df[list(COLUMNS)]
