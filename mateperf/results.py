"""Run directories: where every measurement is stored and read back from.

A run directory `results/<run_id>/` holds run.json (fingerprint, parameters, status), one tidy
`<phase>.parquet`, `<phase>.md`, `plots/*.png` and the executed notebooks. Every write is
atomic (temp file in the same directory given the mode open() would give, fsync, rename; a
rename Windows refuses because another program holds the file is retried briefly) so a killed
run never leaves a half-written file that a later report would read, and a new run directory is
created with an exclusive mkdir so two runs can never share (and overwrite) one.

A run recorded as it goes (the live phase: a companion that may be killed at any moment)
appends its rows to a journal, `<phase>.jsonl`, one JSON object per line, each line one
write() to a file opened for appending: a killed process keeps every line it wrote, and a line
cut short (the machine stopped mid-write) is left out on reading. A later line with the same
`trial` completes that row (figures known only after the call). The frame is read from the
parquet where the run finished and wrote one, else from the journal.
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

from mateperf import host
from mateperf.upgrade import upgrade

RUN_JSON = "run.json"
FINAL_NAME = "FINAL_RESULTS.md"  # the results root's report, written by mateperf.report
STATUS_RUNNING = "running"
STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_PARTIAL = "partial"  # a sweep in which some points failed


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
            "error": None,
            **(extra or {}),
        }
        run = cls(path, info)
        run.save_info()
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


def append_journal(path: Path, row: dict) -> None:
    """Append one row as one line: a single write() to a file opened for appending, so a
    process killed after it returns keeps the line (a power cut may not: no fsync per row)."""
    line = (json.dumps(row, default=str, allow_nan=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_journal(path: Path) -> list[dict]:
    """Every complete line of a journal; a line cut short (no newline, or not JSON) is left
    out."""
    rows = []
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            try:
                rows.append(json.loads(raw.decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
    return rows


def journal_frame(path: Path) -> pd.DataFrame:
    """A journal as a frame: one row per `trial`, later lines completing earlier ones."""
    merged: dict = {}
    for row in read_journal(path):
        merged.setdefault(row.get("trial"), {}).update(row)
    return pd.DataFrame(list(merged.values()))


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
) -> RunDir | None:
    """The newest finished run of a phase, of one of `kinds`, that has its parquet.

    `accept(info) -> bool` narrows further (e.g. leave out a phase's self-check runs).
    `runs`: an already listed root (oldest first), so a caller asking many questions of one
    root reads its run.json files once.
    """
    listed = list_runs(root, phase) if runs is None else [r for r in runs if r.phase == phase]
    done = [
        r
        for r in listed
        if r.info.get("status") in (STATUS_OK, STATUS_PARTIAL)
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
