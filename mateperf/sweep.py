"""Papermill grid runner: one kernel per point, sequentially, resumable after any kill.

A sweep directory holds `manifest.json` (every point's parameters, status, duration and, for a
failed point, the cell, exception and message) and `points/<name>/`, each a run directory with
its executed notebook and parquet. The manifest is rewritten atomically at every change of
state, so a sweep killed at any moment (SIGKILL included) can be resumed: finished points are
kept, a point caught mid-run is discarded and run again, and the combined `<phase>.parquet`
is built from each finished point exactly once.
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mateperf import phases, results
from mateperf.errors import BadInput, ParameterError

MANIFEST = "manifest.json"
POINTS_DIR = "points"
PENDING, RUNNING, OK, FAILED = "pending", "running", "ok", "failed"
KIND = "sweep"


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
    refused here: such a point runs, fails, is recorded, and the sweep goes on.
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
        name: _unique([phases.coerce_value(name, v, schema[name]) for v in values])
        for name, values in grid_raw.items()
    }
    fixed = {name: phases.coerce_value(name, v, schema[name]) for name, v in fixed_raw.items()}
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
    slug = "_".join(f"{k}={v}" for k, v in swept.items())
    safe = "".join(c if c.isalnum() or c in "=_-." else "-" for c in slug)
    return f"p{index:03d}_{safe}"[:120]


@dataclass
class Sweep:
    run: results.RunDir
    executed: set[str] = field(default_factory=set)  # points run by this invocation

    @property
    def manifest_path(self) -> Path:
        return self.run.path / MANIFEST

    def manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text())

    def save_manifest(self, manifest: dict) -> None:
        results.atomic_write_json(self.manifest_path, manifest)

    @classmethod
    def create(cls, phase: str, grid: dict, fixed: dict, schema: dict, command: str) -> Sweep:
        run = results.RunDir.create(
            phase,
            {**schema, **fixed},
            kind=KIND,
            command=command,
            extra={"grid": grid, "fixed": fixed},
        )
        sweep = cls(run)
        manifest = {
            "phase": phase,
            "grid": grid,
            "fixed": fixed,
            "points": [
                {
                    "index": i,
                    "name": point_name(i, swept),
                    "params": swept,
                    "status": PENDING,
                    "attempts": 0,
                    "duration_s": None,
                    "execution_s": None,
                    "measure_s": None,
                    "error": None,
                }
                for i, swept in enumerate(points(grid))
            ],
        }
        sweep.save_manifest(manifest)
        return sweep

    @classmethod
    def open(cls, path: Path) -> Sweep:
        try:
            run = results.RunDir.open(path)
        except FileNotFoundError as exc:
            raise BadInput(str(exc)) from None
        if run.info.get("kind") != KIND or not (run.path / MANIFEST).is_file():
            raise BadInput(f"{path} is not a sweep directory (no {MANIFEST})")
        return cls(run)

    def point_dir(self, point: dict) -> Path:
        return self.run.path / POINTS_DIR / point["name"]

    def _adopt_or_reset(self, point: dict) -> None:
        """A point caught mid-run: keep it if it had finished, else throw its remains away."""
        d = self.point_dir(point)
        info_path = d / results.RUN_JSON
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            if (
                info.get("status") == results.STATUS_OK
                and (d / f"{self.run.phase}.parquet").is_file()
            ):
                point.update(
                    status=OK,
                    execution_s=info.get("execution_s"),
                    measure_s=info.get("measure_s"),
                )
                return
        if d.exists():
            shutil.rmtree(d)
        point["status"] = PENDING

    def execute(self, show_progress: bool = True) -> dict:
        from tqdm import tqdm

        from mateperf.execute import execute_phase

        phase = self.run.phase
        manifest = self.manifest()
        for point in manifest["points"]:
            if point["status"] == RUNNING:
                self._adopt_or_reset(point)
        self.save_manifest(manifest)
        self.run.update(status=results.STATUS_RUNNING, ended_at=None)

        todo = [p for p in manifest["points"] if p["status"] in (PENDING, RUNNING)]
        self.executed = {p["name"] for p in todo}
        total = len(manifest["points"])
        bar = tqdm(
            total=total,
            initial=total - len(todo),
            desc=f"sweep {phase}",
            unit="point",
            file=sys.stderr,
            disable=not show_progress,
        )
        fixed = manifest["fixed"]
        for point in todo:
            params = {**phases.defaults(phase), **fixed, **point["params"]}
            bar.set_postfix_str(" ".join(f"{k}={v}" for k, v in point["params"].items()))
            point_dir = self.point_dir(point)
            if point_dir.exists():
                shutil.rmtree(point_dir)
            point_run = results.RunDir.create_at(
                point_dir, phase, params, command=self.run.info.get("command", "")
            )
            point.update(status=RUNNING, attempts=point["attempts"] + 1, error=None)
            self.save_manifest(manifest)
            start = time.perf_counter()
            outcome = execute_phase(phase, params, point_run, show_progress=False)
            point.update(
                status=OK if outcome.ok else FAILED,
                duration_s=round(time.perf_counter() - start, 3),
                execution_s=outcome.run.info.get("execution_s"),
                measure_s=outcome.run.info.get("measure_s"),
                error=outcome.error,
            )
            self.save_manifest(manifest)
            if not outcome.ok:
                e = outcome.error or {}
                bar.write(
                    f"point {point['name']} failed: cell {e.get('cell')}: "
                    f"{e.get('ename')}: {e.get('evalue')}"
                )
            bar.update(1)
        bar.close()
        return self.finish(manifest)

    def finish(self, manifest: dict) -> dict:
        """Combine the finished points into one tidy parquet; write the sweep's markdown."""
        phase = self.run.phase
        frames = []
        for point in manifest["points"]:
            if point["status"] != OK:
                continue
            df = pd.read_parquet(self.point_dir(point) / f"{phase}.parquet")
            df.insert(0, "point", point["index"])
            df["point_run_id"] = df["run_id"]
            df["run_id"] = self.run.run_id
            frames.append(df)
        ok = sum(p["status"] == OK for p in manifest["points"])
        failed = [p for p in manifest["points"] if p["status"] == FAILED]
        if frames:
            self.run.write_frame(pd.concat(frames, ignore_index=True, sort=False), phase)
        status = results.STATUS_OK if ok and not failed else results.STATUS_FAILED
        if ok and failed:
            status = results.STATUS_PARTIAL
        self.run.info.update(points_ok=ok, points_failed=len(failed))
        self.run.finish(status, None if not failed else f"{len(failed)} point(s) failed")
        if frames:
            from mateperf.report import run_header
            from mateperf.reports.sweep import section

            df = self.run.read_frame(phase)
            md = (
                run_header(self.run.info)
                + "\n"
                + section(df, self.run.info, self.run.plots_dir, self.run.path)
            )
            self.run.write_text(f"{phase}.md", md)
        return manifest


def overhead(manifest: dict, wall_s: float | None = None, only: set[str] | None = None) -> dict:
    """Share of the sweep's time spent outside the measured work (kernel start, papermill).

    `only` restricts it to the points run by this invocation (a resumed sweep's wall time
    covers only those).
    """
    done = [
        p
        for p in manifest["points"]
        if p["status"] == OK and p.get("measure_s") and (only is None or p["name"] in only)
    ]
    total = wall_s if wall_s is not None else sum(p["duration_s"] or 0 for p in done)
    measured = sum(p["measure_s"] for p in done)
    return {
        "points": len(done),
        "wall_s": total,
        "measured_s": measured,
        "overhead_share": 1 - measured / total if total else float("nan"),
    }
