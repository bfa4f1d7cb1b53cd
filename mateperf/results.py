"""Run directories: where every measurement is stored and read back from.

A run directory `results/<run_id>/` holds run.json (fingerprint, parameters, status), one tidy
`<phase>.parquet`, `<phase>.md`, `plots/*.png` and the executed notebooks. Every write is
atomic (temp file in the same directory given the mode open() would give, fsync, rename; a
rename Windows refuses because another program holds the file is retried briefly) so a killed
run never leaves a half-written file that a later report would read, and a new run directory is
created with an exclusive mkdir so two runs can never share (and overwrite) one.

A run recorded as it goes (the live phase: a companion that may be killed at any moment)
appends its rows to a journal, `<phase>.jsonl` (mateperf.journal); its frame is read from the
parquet where the run finished and wrote one, else from the journal.

run.json records the process that owns the run (`owner`: pid, its start time, host;
mateperf.run_owner). A run killed before it could finish stays "running" in its file;
`status_now` tells a reader that it is interrupted once its process is gone, without rewriting
the file (readers never write). Ctrl+C in `mateperf` marks the runs the process still owns
interrupted itself (`interrupt_owned_runs`).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mateperf import host, run_owner
from mateperf.journal import journal_frame
from mateperf.upgrade import upgrade

RUN_JSON = "run.json"
FINAL_NAME = "FINAL_RESULTS.md"  # the results root's report, written by mateperf.report
STATUS_RUNNING = "running"
STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_PARTIAL = "partial"  # a sweep in which some points failed
# a run whose process stopped before it finished: stored by Ctrl+C, else told by status_now
STATUS_INTERRUPTED = "interrupted"
# what status_now says of a "running" run it cannot check
STATUS_ELSEWHERE = "running (on another host, cannot tell)"
STATUS_UNRECORDED = "running (no owner recorded, cannot tell)"


def default_root() -> Path:
    """$MATEPERF_RESULTS, else results/ in the repository."""
    env = os.environ.get("MATEPERF_RESULTS")
    return Path(env).resolve() if env else host.REPO_ROOT / "results"


def shown_path(path: str | Path, root: Path | None = None) -> str:
    """A path as a report prints it: relative to the results root (`<run_id>/recommended.json`),
    else to the repository, else its name alone; never the absolute path of the machine that
    ran it."""
    if not str(path):
        return ""
    path = Path(path).expanduser()
    for base in (Path(root) if root else default_root(), host.REPO_ROOT):
        try:
            return path.resolve().relative_to(Path(base).resolve()).as_posix()
        except (ValueError, OSError):
            continue
    return path.name


def command_path(path: str | Path, root: Path | None = None) -> str:
    """A path as a stored command names it: from the repository root (`results/<run_id>/...`)
    where it lies under the results root, else as `shown_path` names it."""
    root = Path(root) if root else default_root()
    shown = shown_path(path, root)
    try:
        Path(path).expanduser().resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return shown
    return f"{root.name}/{shown}"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


# Windows refuses to replace a file another process holds open without FILE_SHARE_DELETE: an
# antivirus scan of the new file, a sync client (OneDrive) uploading it, a notebook or viewer
# reading the old one. Those hold it for well under a second, so the rename is retried with a
# doubling back-off (1.55 s in all) before the write fails.
REPLACE_BACKOFF_S = (0.05, 0.1, 0.2, 0.4, 0.8)


class FileHeldOpen(PermissionError):
    """The atomic rename kept failing: another program holds the target open."""

    def __init__(self, path: Path, attempts: int, cause: OSError):
        self.path, self.attempts, self.cause = Path(path), attempts, cause
        super().__init__(
            f"cannot replace {path}: still refused after {attempts} tries "
            f"({cause.strerror or cause}); it is likely held open by {likely_holder(path)}; "
            "close it and run again"
        )

    def __str__(self) -> str:
        return self.args[0]


def likely_holder(path: Path) -> str:
    """Who usually holds a file of this kind open on Windows, for the error line."""
    readers = {
        ".parquet": "a program reading the table (a notebook, pandas, Excel)",
        ".md": "an editor or markdown preview",
        ".png": "an image viewer or markdown preview",
        ".json": "an editor",
    }.get(Path(path).suffix, "another program")
    return f"{readers}, an antivirus scan or a sync client (OneDrive, Dropbox)"


def replace_retrying(tmp: str | Path, path: Path) -> None:
    """``os.replace(tmp, path)``, retried on PermissionError (see REPLACE_BACKOFF_S); then
    FileHeldOpen, one line naming the file and the likely holder."""
    for wait_s in (*REPLACE_BACKOFF_S, None):
        try:
            os.replace(tmp, path)
            return
        except PermissionError as exc:
            if wait_s is None:
                raise FileHeldOpen(path, len(REPLACE_BACKOFF_S) + 1, exc) from exc
            time.sleep(wait_s)


@functools.lru_cache(maxsize=1)
def ordinary_file_mode() -> int:
    """The mode open() gives a new file: 0o666 less the umask. Read once: os.umask can only be
    read by setting it, and another thread creating a file in between would get the wrong one,
    so it is read on first use, not on every write."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temp file in path's directory with the mode open() would have given path: mkstemp
    makes it 0600, which the rename would keep, leaving run files unreadable to the group and
    others that every other file of the run directory is readable to."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, ordinary_file_mode())  # on Windows only the read-only bit: stays writable
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        replace_retrying(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_write_parquet(path: Path, df: pd.DataFrame) -> None:
    path = Path(path)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        # Opened for writing: Windows' FlushFileBuffers (behind os.fsync) refuses a read-only
        # handle with EBADF, which failed every run there.
        with open(tmp, "r+b") as fh:
            os.fsync(fh.fileno())
        replace_retrying(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def new_run_id(phase: str, kind: str = "run") -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    suffix = "" if kind == "run" else f"-{kind}"
    return f"{stamp}-{phase}{suffix}-{secrets.token_hex(2)}"


@dataclass
class RunDir:
    path: Path
    info: dict = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.info.get("run_id", self.path.name)

    @property
    def phase(self) -> str:
        return self.info.get("phase", "")

    @classmethod
    def create(
        cls,
        phase: str,
        params: dict,
        root: Path | None = None,
        kind: str = "run",
        command: str = "",
        extra: dict | None = None,
    ) -> RunDir:
        """Make a fresh run directory; never reuses an existing one."""
        root = Path(root) if root else default_root()
        root.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            try:
                return cls.create_at(
                    root / new_run_id(phase, kind), phase, params, kind, command, extra
                )
            except FileExistsError:
                continue
        raise RuntimeError(f"could not create a new run directory under {root}")

    @classmethod
    def create_at(
        cls,
        path: Path,
        phase: str,
        params: dict,
        kind: str = "run",
        command: str = "",
        extra: dict | None = None,
    ) -> RunDir:
        """Make the run directory `path` (which must not exist) and its run.json."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir()  # FileExistsError if taken: runs never share a directory
        info = {
            "run_id": path.name,
            "phase": phase,
            "kind": kind,
            "params": params,
            "command": command,
            "fingerprint": host.fingerprint(),
            "started_at": utc_now(),
            "ended_at": None,
            "status": STATUS_RUNNING,
            "owner": run_owner.this_process(),
            "error": None,
            **(extra or {}),
        }
        run = cls(path, info)
        run.save_info()
        _OWNED[run.path] = run
        return run

    @classmethod
    def open(cls, path: Path) -> RunDir:
        path = Path(path)
        info_path = path / RUN_JSON
        if not info_path.is_file():
            raise FileNotFoundError(f"{path} is not a run directory (no {RUN_JSON})")
        return cls(path, json.loads(info_path.read_text(encoding="utf-8")))

    def save_info(self) -> None:
        atomic_write_json(self.path / RUN_JSON, self.info)

    def update(self, **fields) -> None:
        self.info.update(fields)
        self.save_info()

    def finish(self, status: str, error: str | None = None) -> None:
        self.update(status=status, error=error, ended_at=utc_now())
        _OWNED.pop(self.path, None)

    def resume(self) -> None:
        """Running again, owned by this process (a sweep resumed after it was stopped)."""
        self.update(status=STATUS_RUNNING, ended_at=None, owner=run_owner.this_process())
        _OWNED[self.path] = self

    def frame_path(self, phase: str | None = None) -> Path:
        return self.path / f"{phase or self.phase}.parquet"

    def write_frame(self, df: pd.DataFrame, phase: str | None = None) -> Path:
        path = self.frame_path(phase)
        atomic_write_parquet(path, df)
        return path

    def journal_path(self, phase: str | None = None) -> Path:
        return self.path / f"{phase or self.phase}.jsonl"

    def has_frame(self, phase: str | None = None) -> bool:
        """A parquet, or a journal of rows appended as they went."""
        return self.frame_path(phase).is_file() or self.journal_path(phase).is_file()

    def read_frame(self, phase: str | None = None) -> pd.DataFrame:
        """The stored frame (the parquet, else the journal), upgraded to the current format
        (mateperf.upgrade)."""
        path = self.frame_path(phase)
        if not path.is_file() and self.journal_path(phase).is_file():
            # the run never finished: its journal, with the context a parquet's rows carry
            frame = tidy(
                journal_frame(self.journal_path(phase)),
                self.run_id,
                phase or self.phase,
                self.info.get("params", {}),
            )
        else:
            frame = pd.read_parquet(path)
        return upgrade(frame, phase or self.phase)

    def write_text(self, name: str, text: str) -> Path:
        path = self.path / name
        atomic_write_text(path, text)
        return path

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"


# The runs this process created (or resumed) and has not finished, for Ctrl+C.
_OWNED: dict[Path, RunDir] = {}


def interrupt_owned_runs(reason: str) -> list[RunDir]:
    """Record every run this process still owns as interrupted (`reason` as its error): what
    a Ctrl+C leaves unfinished. Its run.json is read first: a notebook's kernel writes to it
    too."""
    stopped = []
    for run in list(_OWNED.values()):
        try:
            run.info = RunDir.open(run.path).info
            run.finish(STATUS_INTERRUPTED, reason)
        except (OSError, json.JSONDecodeError):
            _OWNED.pop(run.path, None)  # its directory went away: nothing left to mark
            continue
        stopped.append(run)
    return stopped


def status_now(info: dict) -> str:
    """A run's status as it stands now: run.json's, except that a run still "running" whose
    process is gone (same host, no process with that pid and start time) is
    STATUS_INTERRUPTED, and one owned on another host (or recorded before owners were) cannot
    be told: STATUS_ELSEWHERE (STATUS_UNRECORDED). Reads; never rewrites the file."""
    status = info.get("status")
    if status != STATUS_RUNNING:
        return status
    return {
        run_owner.ALIVE: STATUS_RUNNING,
        run_owner.GONE: STATUS_INTERRUPTED,
        run_owner.ELSEWHERE: STATUS_ELSEWHERE,
        run_owner.UNRECORDED: STATUS_UNRECORDED,
    }[run_owner.check(info.get("owner"))]


def tidy(df: pd.DataFrame, run_id: str, phase: str, params: dict) -> pd.DataFrame:
    """Add run_id, phase and every parameter as a column (the row carries its context)."""
    out = df.copy()
    for name, value in params.items():
        if name not in out.columns:
            out[name] = value if not isinstance(value, list | dict) else json.dumps(value)
    out["run_id"] = run_id
    out["phase"] = phase
    front = [c for c in ("run_id", "phase", "scenario", "trial") if c in out.columns]
    return out[front + [c for c in out.columns if c not in front]]


def list_runs(root: Path | None = None, phase: str | None = None) -> list[RunDir]:
    """Every run directory under root, oldest first."""
    root = Path(root) if root else default_root()
    runs = []
    if not root.is_dir():
        return runs
    for info_path in root.glob(f"*/{RUN_JSON}"):
        try:
            run = RunDir.open(info_path.parent)
        except (OSError, json.JSONDecodeError):
            continue
        if phase is None or run.phase == phase:
            runs.append(run)
    return sorted(runs, key=lambda r: (r.info.get("started_at") or "", r.run_id))


def latest_run(
    phase: str,
    root: Path | None = None,
    kinds: tuple[str, ...] = ("run", "notebook"),
    accept=None,
    runs: list[RunDir] | None = None,
    interrupted: bool = False,
) -> RunDir | None:
    """The newest finished run of a phase, of one of `kinds`, that has its parquet.

    `accept(info) -> bool` narrows further (e.g. leave out a phase's self-check runs).
    `runs`: an already listed root (oldest first), so a caller asking many questions of one
    root reads its run.json files once. `interrupted`: interrupted runs count too (a phase
    recorded as it goes: its journal holds the rows up to the interruption).
    """
    listed = list_runs(root, phase) if runs is None else [r for r in runs if r.phase == phase]
    wanted = (STATUS_OK, STATUS_PARTIAL) + ((STATUS_INTERRUPTED,) if interrupted else ())
    done = [
        r
        for r in listed
        if status_now(r.info) in wanted
        and r.info.get("kind", "run") in kinds
        and r.has_frame()
        and (accept is None or accept(r.info))
    ]
    return done[-1] if done else None


def load_run(path: Path, phase: str | None = None) -> pd.DataFrame:
    run = RunDir.open(path)
    return run.read_frame(phase)


def load_runs(paths: list[Path], phase: str | None = None) -> pd.DataFrame:
    """Concatenate the tidy frames of several runs (columns union, run_id tells them apart)."""
    frames = [load_run(p, phase) for p in paths]
    return pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()
