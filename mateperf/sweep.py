"""Papermill grid runner in rounds: one kernel per point-round, sequentially, resumable.

Every round visits every point of the grid once, in its own seeded shuffled order, so drift
over a sweep (heat, background load, page cache) spreads over all points instead of reading
as a parameter effect. A phase's repetition parameters (its ROUND_SPLIT, primary first) are
divided among the rounds: the primary total T runs as T//R + (r < T%R) in round r, a
secondary one as max(1, its share). A phase without one runs the whole point in every round
(a replicate). The unit of work, of the manifest and of resuming is the point-round.

A sweep directory holds:
  run.json        the sweep's run record: grid, fixed, rounds, order_seed, round_split, status
  manifest.json   the points, and every point-round in execution order with its attempts
  points/<point>-r<round>/         each point-round's run directory (notebook, parquet)
  attempts/<point>-r<round>-a<n>/  the directory of an earlier failed or interrupted attempt
  <phase>.parquet the finished point-rounds combined, with columns `point` and `round`

The manifest is rewritten atomically at every change of state, and every step that moves a
directory can be repeated, so a sweep killed at any moment (SIGKILL included) resumes exactly:
a finished point-round is kept (adopted, if it finished before the manifest said so), a
point-round caught mid-run or failed is run again (its attempt stays recorded), and the
combined parquet holds each point-round exactly once.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mateperf import phases, results
from mateperf.errors import BadInput, ParameterError
from mateperf.params import coerce

MANIFEST = "manifest.json"
POINTS_DIR = "points"
ATTEMPTS_DIR = "attempts"
PENDING, RUNNING, OK, FAILED = "pending", "running", "ok", "failed"
INTERRUPTED = "interrupted"  # an attempt only: the sweep stopped while it ran
KIND = "sweep"
MANIFEST_FORMAT = 2  # 2: point-rounds with attempt histories
DEFAULT_MAX_ROUNDS = 3
SHARE_PREFIX = "round_"  # combined frame: round_<name> is a round's share of parameter <name>


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`key=v1,v2` items -> {key: [v1, v2]}; bad syntax is a ParameterError."""
    grid: dict[str, list[str]] = {}
    for item in items or []:
        name, sep, values = item.partition("=")
        name = name.strip()
        parts = [v.strip() for v in values.split(",")]
        if not sep or not name or not values.strip() or any(v == "" for v in parts):
            raise ParameterError(f"--grid {item!r}: expected key=v1,v2,... with no empty value")
        if name in grid:
            raise ParameterError(f"--grid {name} given twice")
        grid[name] = parts
    if not grid:
        raise ParameterError("a sweep needs at least one --grid key=v1,v2,...")
    return grid


def plan(phase: str, grid_raw: dict[str, list[str]], fixed_raw: dict[str, str]) -> tuple:
    """Validate names and types of every grid value and fixed parameter before anything runs.

    Values that are well-typed but impossible for the phase (n_ctx too small, say) are not
    refused here: such a point runs, fails, is recorded, and the sweep goes on. Path values
    are made absolute (kernels run in their own directory).
    """
    phases.check_phase(phase)
    schema = phases.defaults(phase)
    both = set(grid_raw) & set(fixed_raw)
    if both:
        raise ParameterError(f"parameter {sorted(both)[0]!r} is both swept and fixed")
    for name in [*grid_raw, *fixed_raw]:
        if name not in schema:
            raise ParameterError(
                f"unknown parameter {name!r} for phase {phase} (known: {', '.join(schema)})"
            )
    grid = {
        name: _unique(
            [phases.absolute_paths({name: coerce(name, v, schema[name])})[name] for v in values]
        )
        for name, values in grid_raw.items()
    }
    fixed = phases.absolute_paths(
        {name: coerce(name, v, schema[name]) for name, v in fixed_raw.items()}
    )
    if "model" in schema and "model" not in grid:  # one file for every point: check it now
        from mateperf.model import resolve_model

        resolve_model(fixed.get("model") or schema.get("model") or None)
    return grid, fixed, schema


def _unique(values: list) -> list:
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def points(grid: dict[str, list]) -> list[dict]:
    names = list(grid)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*grid.values())]


def point_name(index: int, swept: dict) -> str:
    def shown(name, value):
        return Path(value).name if name in phases.PATH_PARAMS and value else value

    slug = "_".join(f"{k}={shown(k, v)}" for k, v in swept.items())
    safe = "".join(c if c.isalnum() or c in "=_-." else "-" for c in slug)
    return f"p{index:03d}_{safe}"[:120]


def round_share(total: int, rounds: int, round_index: int) -> int:
    """Round `round_index`'s part of `total` repetitions spread over `rounds` rounds."""
    return total // rounds + (round_index < total % rounds)


def round_shares(params: dict, split: tuple[str, ...], rounds: int, round_index: int) -> dict:
    """Each split parameter's value in one round: the primary's exact share, the others >= 1."""
    shares = {}
    for i, name in enumerate(split):
        share = round_share(int(params[name]), rounds, round_index)
        shares[name] = share if i == 0 else max(1, share)
    return shares


def choose_rounds(phase: str, point_params: list[dict], rounds: int | None) -> int:
    """Validate `--rounds` against every point's primary total T, or pick min(T, 3).

    A phase with nothing to split runs one round unless asked for more (each a replicate).
    """
    split = phases.round_split(phase)
    if rounds is not None and rounds < 1:
        raise ParameterError(f"--rounds {rounds}: must be at least 1")
    if not split:
        return 1 if rounds is None else rounds
    primary = split[0]
    smallest = min(int(p[primary]) for p in point_params)
    if smallest < 1:
        raise ParameterError(f"parameter {primary}={smallest} must be at least 1")
    if rounds is None:
        return min(smallest, DEFAULT_MAX_ROUNDS)
    if rounds > smallest:
        raise ParameterError(
            f"--rounds {rounds} is more than {primary}={smallest}: every round of a point "
            f"runs at least one of its {primary}, so use --rounds {smallest} or more {primary}"
        )
    return rounds


def visit_order(n_points: int, rounds: int, seed: int) -> list[list[int]]:
    """Each round's order of the points: one seeded generator, one permutation per round."""
    rng = np.random.default_rng(seed)
    return [[int(i) for i in rng.permutation(n_points)] for _ in range(rounds)]


def unit_name(point: dict, round_index: int) -> str:
    return f"{point['name']}-r{round_index}"


def _elapsed_s(started_at: str | None, ended_at: str | None) -> float | None:
    """Seconds between two run.json timestamps (an adopted point-round's duration)."""
    if not started_at or not ended_at:
        return None
    delta = dt.datetime.fromisoformat(ended_at) - dt.datetime.fromisoformat(started_at)
    return round(delta.total_seconds(), 3)


@dataclass
class Sweep:
    run: results.RunDir
    executed: set[str] = field(default_factory=set)  # point-rounds run by this invocation

    @property
    def manifest_path(self) -> Path:
        return self.run.path / MANIFEST

    def manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def save_manifest(self, manifest: dict) -> None:
        results.atomic_write_json(self.manifest_path, manifest)

    @classmethod
    def create(
        cls,
        phase: str,
        grid: dict,
        fixed: dict,
        schema: dict,
        command: str,
        rounds: int | None = None,
        seed: int | None = None,
    ) -> Sweep:
        """Plan every point-round (refusing impossible rounds) and write the manifest."""
        swept = points(grid)
        full = [{**schema, **fixed, **s} for s in swept]
        rounds = choose_rounds(phase, full, rounds)
        split = phases.round_split(phase)
        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        if seed < 0:
            raise ParameterError(f"--seed {seed}: must not be negative")
        run = results.RunDir.create(
            phase,
            {**schema, **fixed},
            kind=KIND,
            command=command,
            extra={
                "grid": grid,
                "fixed": fixed,
                "rounds": rounds,
                "order_seed": seed,
                "round_split": list(split),
            },
        )
        point_list = [
            {
                "index": i,
                "name": point_name(i, s),
                "params": s,
                "totals": {name: full[i][name] for name in split},
            }
            for i, s in enumerate(swept)
        ]
        units = []
        for r, order in enumerate(visit_order(len(point_list), rounds, seed)):
            for i in order:
                point = point_list[i]
                units.append(
                    {
                        "index": len(units),
                        "point": i,
                        "round": r,
                        "name": unit_name(point, r),
                        "params": point["params"],
                        "shares": round_shares(full[i], split, rounds, r),
                        "status": PENDING,
                        "duration_s": None,
                        "execution_s": None,
                        "measure_s": None,
                        "error": None,
                        "attempts": [],
                    }
                )
        manifest = {
            "format": MANIFEST_FORMAT,
            "phase": phase,
            "grid": grid,
            "fixed": fixed,
            "rounds": rounds,
            "order_seed": seed,
            "round_split": list(split),
            "points": point_list,
            "point_rounds": units,
        }
        sweep = cls(run)
        sweep.save_manifest(manifest)
        return sweep

    @classmethod
    def open(cls, path: Path) -> Sweep:
        path = Path(path).expanduser().resolve()  # the kernels do not run where we were started
        try:
            run = results.RunDir.open(path)
        except FileNotFoundError as exc:
            raise BadInput(str(exc)) from None
        if run.info.get("kind") != KIND or not (run.path / MANIFEST).is_file():
            raise BadInput(f"{path} is not a sweep directory (no {MANIFEST})")
        sweep = cls(run)
        if "point_rounds" not in sweep.manifest():
            raise BadInput(
                f"{path} was made by an older mateperf (no point-rounds in {MANIFEST}); "
                "start a new sweep"
            )
        return sweep

    def point_dir(self, unit: dict) -> Path:
        return self.run.path / POINTS_DIR / unit["name"]

    def attempt_dir(self, unit: dict, attempt: int) -> Path:
        return self.run.path / ATTEMPTS_DIR / f"{unit['name']}-a{attempt}"

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.run.path).as_posix()  # the manifest reads the same on every OS

    def _settle(self, unit: dict) -> None:
        """A point-round the manifest says is running: the sweep stopped while it ran.

        If its run directory says it finished ok, it is adopted; otherwise its attempt is
        recorded as failed (the directory says why) or interrupted, to be run again.
        """
        attempt = unit["attempts"][-1]
        d = self.point_dir(unit)
        if not d.exists() and self.attempt_dir(unit, attempt["attempt"]).exists():
            d = self.attempt_dir(unit, attempt["attempt"])  # moved aside just before a kill
        info = {}
        if (d / results.RUN_JSON).is_file():
            try:
                info = json.loads((d / results.RUN_JSON).read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                info = {}
        status = info.get("status")
        if (
            status == results.STATUS_OK
            and d == self.point_dir(unit)
            and (d / f"{self.run.phase}.parquet").is_file()
        ):
            outcome = {"status": OK, "error": None, "adopted": True}
        elif status == results.STATUS_FAILED:
            outcome = {"status": FAILED, "error": info.get("error")}
        else:
            outcome = {
                "status": INTERRUPTED,
                "error": {
                    "cell": None,
                    "cell_index": None,
                    "ename": "Interrupted",
                    "evalue": "the sweep stopped (killed or interrupted) while this ran",
                },
            }
        attempt.update(
            outcome,
            duration_s=_elapsed_s(info.get("started_at"), info.get("ended_at")),
            execution_s=info.get("execution_s"),
            measure_s=info.get("measure_s"),
        )
        unit.update(
            status=OK if outcome["status"] == OK else FAILED,
            error=outcome["error"],
            duration_s=attempt["duration_s"],
            execution_s=attempt["execution_s"],
            measure_s=attempt["measure_s"],
        )

    def _retire(self, unit: dict) -> None:
        """Move a failed attempt's directory under attempts/ and make the point-round pending."""
        attempt = unit["attempts"][-1]
        src, dest = self.point_dir(unit), self.attempt_dir(unit, attempt["attempt"])
        if src.exists():
            if dest.exists():  # cannot happen with one sweep per directory; keep both anyway
                dest = dest.with_name(f"{dest.name}-{secrets.token_hex(2)}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            src.rename(dest)
        # None: killed before its directory existed (the next attempt will use that name)
        attempt["dir"] = self._relative(dest) if dest.exists() else None
        unit.update(status=PENDING)

    def recover(self, manifest: dict) -> None:
        """Settle point-rounds caught running; make failed ones pending again. Idempotent."""
        for unit in manifest["point_rounds"]:
            if unit["status"] == RUNNING:
                self._settle(unit)
            if unit["status"] == FAILED:
                self._retire(unit)
        self.save_manifest(manifest)

    def execute(self, show_progress: bool = True) -> dict:
        from tqdm import tqdm

        manifest = self.manifest()
        self.recover(manifest)
        self.run.update(status=results.STATUS_RUNNING, ended_at=None)

        units = manifest["point_rounds"]
        todo = [u for u in units if u["status"] == PENDING]
        bar = tqdm(
            total=len(units),
            initial=len(units) - len(todo),
            desc=f"sweep {self.run.phase}",
            unit="point-round",
            file=sys.stderr,
            disable=not show_progress,
        )
        for unit in todo:
            bar.set_postfix_str(
                f"round {unit['round']} " + " ".join(f"{k}={v}" for k, v in unit["params"].items())
            )
            self._execute_unit(manifest, unit)
            if unit["status"] != OK:
                e = unit["error"] or {}
                bar.write(
                    f"point-round {unit['name']} failed: cell {e.get('cell')}: "
                    f"{e.get('ename')}: {e.get('evalue')}"
                )
            bar.update(1)
        bar.close()
        return self.finish(manifest)

    def _execute_unit(self, manifest: dict, unit: dict) -> None:
        from mateperf.execute import execute_phase

        phase = self.run.phase
        params = {
            **phases.defaults(phase),
            **manifest["fixed"],
            **unit["params"],
            **unit["shares"],
        }
        d = self.point_dir(unit)
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
            "dir": self._relative(d),
        }
        unit["attempts"].append(attempt)
        unit.update(status=RUNNING, error=None)
        self.save_manifest(manifest)  # before the directory exists: see _settle
        point_run = results.RunDir.create_at(
            d,
            phase,
            params,
            command=self.run.info.get("command", ""),
            extra={
                "sweep": {
                    "run_id": self.run.run_id,
                    "point": unit["point"],
                    "round": unit["round"],
                    "rounds": manifest["rounds"],
                    "totals": manifest["points"][unit["point"]]["totals"],
                }
            },
        )
        self.executed.add(unit["name"])
        start = time.perf_counter()
        outcome = execute_phase(
            phase, params, point_run, show_progress=False, lock_root=self.run.path.parent
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
        self.save_manifest(manifest)

    def finish(self, manifest: dict) -> dict:
        """Combine the finished point-rounds into one tidy parquet (the markdown is the
        reports' job: `mateperf.reports.sweep.write_markdown`).

        Each point-round's rows keep their own `trial` numbers; (round, trial) names a
        replicate. Split parameters carry the point's total, `round_<name>` the round's share.
        """
        phase = self.run.phase
        units = manifest["point_rounds"]
        done = sorted(
            (u for u in units if u["status"] == OK), key=lambda u: (u["point"], u["round"])
        )
        frames = [self._unit_frame(manifest, u) for u in done]
        failed = [u for u in units if u["status"] == FAILED]
        if frames:
            self.run.write_frame(pd.concat(frames, ignore_index=True, sort=False), phase)
        status = results.STATUS_OK if done and not failed else results.STATUS_FAILED
        if done and failed:
            status = results.STATUS_PARTIAL
        failed_points = {u["point"] for u in failed}
        ok_points = {u["point"] for u in done} - failed_points
        self.run.info.update(
            point_rounds_ok=len(done),
            point_rounds_failed=len(failed),
            points_ok=len(ok_points),
            points_failed=len(failed_points),
        )
        self.run.finish(status, None if not failed else f"{len(failed)} point-round(s) failed")
        return manifest

    def _unit_frame(self, manifest: dict, unit: dict) -> pd.DataFrame:
        df = pd.read_parquet(self.point_dir(unit) / f"{self.run.phase}.parquet")
        df.insert(0, "point", unit["point"])
        df.insert(1, "round", unit["round"])
        totals = manifest["points"][unit["point"]]["totals"]
        for name, share in unit["shares"].items():
            df[name] = totals[name]
            df[SHARE_PREFIX + name] = share
        df["point_run_id"] = df["run_id"]
        df["run_id"] = self.run.run_id
        return df


def overhead(manifest: dict, wall_s: float | None = None, only: set[str] | None = None) -> dict:
    """Share of the sweep's time spent outside the measured work (kernel start, papermill).

    `only` restricts it to the point-rounds run by this invocation (a resumed sweep's wall
    time covers only those; adopted ones ran in an earlier invocation).
    """
    done = [
        u
        for u in manifest["point_rounds"]
        if u["status"] == OK and u.get("measure_s") and (only is None or u["name"] in only)
    ]
    total = wall_s if wall_s is not None else sum(u["duration_s"] or 0 for u in done)
    measured = sum(u["measure_s"] for u in done)
    return {
        "point_rounds": len(done),
        "wall_s": total,
        "measured_s": measured,
        "overhead_share": 1 - measured / total if total else float("nan"),
    }
