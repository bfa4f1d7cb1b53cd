"""A journal: the rows of a run recorded as it goes, appended one line each.

The live phase's recorder runs inside a companion that may be killed at any moment, so its
rows go to `<phase>.jsonl` in the run directory, one JSON object per line, each line one
write() to a file opened for appending: a killed process keeps every line it wrote, and a line
cut short (the machine stopped mid-write) is left out on reading. A later line with the same
`trial` completes that row (figures known only after the call). `RunDir.read_frame`
(mateperf.results) reads the journal where the run never wrote its parquet.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd


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
