"""Running a sweep: every pending point-round through `mateperf.execute.execute_phase` in the
manifest's order, its state saved before and after, then the finished ones combined into one
tidy frame (each point-round once, with `point`, `round` and each round's shares)."""

from __future__ import annotations

import shutil
import sys
import time

import pandas as pd

from mateperf import phases, results
from mateperf.sweep.manifest import FAILED, OK, PENDING, RUNNING, Sweep
from mateperf.sweep.plan import SHARE_PREFIX


def execute(sweep: Sweep, show_progress: bool = True) -> dict:
    """Run every pending point-round (after `recover`), then combine what finished."""
    from tqdm import tqdm

    manifest = sweep.manifest()
    sweep.recover(manifest)
    sweep.run.resume()  # owned by this process now (mateperf.run_owner)

    units = manifest["point_rounds"]
    todo = [u for u in units if u["status"] == PENDING]
    bar = tqdm(
        total=len(units),
        initial=len(units) - len(todo),
        desc=f"sweep {sweep.run.phase}",
        unit="point-round",
        file=sys.stderr,
        disable=not show_progress,
    )
    for unit in todo:
        bar.set_postfix_str(
            f"round {unit['round']} " + " ".join(f"{k}={v}" for k, v in unit["params"].items())
        )
        _execute_unit(sweep, manifest, unit)
        if unit["status"] != OK:
            e = unit["error"] or {}
            bar.write(
                f"point-round {unit['name']} failed: cell {e.get('cell')}: "
                f"{e.get('ename')}: {e.get('evalue')}"
            )
        bar.update(1)
    bar.close()
    return finish(sweep, manifest)


def _execute_unit(sweep: Sweep, manifest: dict, unit: dict) -> None:
    from mateperf.execute import execute_phase

    phase = sweep.run.phase
    params = {
        **phases.defaults(phase),
        **manifest["fixed"],
        **unit["params"],
        **unit["shares"],
    }
    d = sweep.point_dir(unit)
    if d.exists():  # never recorded as running (recover() moves every attempt's dir)
        shutil.rmtree(d)
    attempt = {
        "attempt": len(unit["attempts"]) + 1,
        "status": RUNNING,
        "started_at": results.utc_now(),
        "duration_s": None,
        "execution_s": None,
        "measure_s": None,
        "error": None,
        "dir": sweep._relative(d),
    }
    unit["attempts"].append(attempt)
    unit.update(status=RUNNING, error=None)
    sweep.save_manifest(manifest)  # before the directory exists: see _settle
    point_run = results.RunDir.create_at(
        d,
        phase,
        params,
        command=sweep.run.info.get("command", ""),
        extra={
            "sweep": {
                "run_id": sweep.run.run_id,
                "point": unit["point"],
                "round": unit["round"],
                "rounds": manifest["rounds"],
                "totals": manifest["points"][unit["point"]]["totals"],
            }
        },
    )
    sweep.executed.add(unit["name"])
    start = time.perf_counter()
    outcome = execute_phase(
        phase, params, point_run, show_progress=False, lock_root=sweep.run.path.parent
    )
    done = {
        "status": OK if outcome.ok else FAILED,
        "duration_s": round(time.perf_counter() - start, 3),
        "execution_s": outcome.run.info.get("execution_s"),
        "measure_s": outcome.run.info.get("measure_s"),
        "error": outcome.error,
    }
    attempt.update(done)
    unit.update(done)
    sweep.save_manifest(manifest)


def finish(sweep: Sweep, manifest: dict) -> dict:
    """Combine the finished point-rounds into one tidy parquet (the markdown is the
    reports' job: `mateperf.reports.sweep.write_markdown`).

    Each point-round's rows keep their own `trial` numbers; (round, trial) names a
    replicate. Split parameters carry the point's total, `round_<name>` the round's share.
    """
    phase = sweep.run.phase
    units = manifest["point_rounds"]
    done = sorted((u for u in units if u["status"] == OK), key=lambda u: (u["point"], u["round"]))
    frames = [_unit_frame(sweep, manifest, u) for u in done]
    failed = [u for u in units if u["status"] == FAILED]
    if frames:
        sweep.run.write_frame(pd.concat(frames, ignore_index=True, sort=False), phase)
    status = results.STATUS_OK if done and not failed else results.STATUS_FAILED
    if done and failed:
        status = results.STATUS_PARTIAL
    failed_points = {u["point"] for u in failed}
    ok_points = {u["point"] for u in done} - failed_points
    sweep.run.info.update(
        point_rounds_ok=len(done),
        point_rounds_failed=len(failed),
        points_ok=len(ok_points),
        points_failed=len(failed_points),
    )
    sweep.run.finish(status, None if not failed else f"{len(failed)} point-round(s) failed")
    return manifest


def _unit_frame(sweep: Sweep, manifest: dict, unit: dict) -> pd.DataFrame:
    df = pd.read_parquet(sweep.point_dir(unit) / f"{sweep.run.phase}.parquet")
    df.insert(0, "point", unit["point"])
    df.insert(1, "round", unit["round"])
    totals = manifest["points"][unit["point"]]["totals"]
    for name, share in unit["shares"].items():
        df[name] = totals[name]
        df[SHARE_PREFIX + name] = share
    df["point_run_id"] = df["run_id"]
    df["run_id"] = sweep.run.run_id
    return df
