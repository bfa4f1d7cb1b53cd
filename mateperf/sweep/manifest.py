"""A sweep's directory and its manifest: every point-round planned and written at creation,
rewritten atomically at every change of state; opening and recovering after a kill.

`Sweep.recover` makes a sweep killed at any moment resumable: a point-round caught running is
adopted if its run directory finished ok, otherwise recorded as failed or interrupted, and a
failed one's directory moves under attempts/ before it runs again.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from mateperf import phases, results
from mateperf.errors import BadInput, ParameterError
from mateperf.sweep.plan import (
    choose_rounds,
    point_name,
    points,
    round_shares,
    unit_name,
    visit_order,
)

MANIFEST = "manifest.json"
POINTS_DIR = "points"
ATTEMPTS_DIR = "attempts"
PENDING, RUNNING, OK, FAILED = "pending", "running", "ok", "failed"
INTERRUPTED = "interrupted"  # an attempt only: the sweep stopped while it ran
KIND = "sweep"
MANIFEST_FORMAT = 2  # 2: point-rounds with attempt histories


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
