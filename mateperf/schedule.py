"""The order trials run in, and a trial that fails without ending the run.

Phases that compare settings inside one run (cpu, final) visit every setting once per round,
each round in a seeded random order, so a drift of the host hits every setting alike; the first
visit is a warm-up of the process and page cache, kept but marked. A trial that raises is
recorded with its error and the run goes on; a run in which every trial failed is a failure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import pandas as pd

T = TypeVar("T")
WARMUP_ROUND = -1


def interleaved(items: Sequence[T], rounds: int, rng: np.random.Generator) -> list[tuple[int, T]]:
    """(round, item) pairs: the first item as a warm-up (round -1), then each round shuffled."""
    order = [(WARMUP_ROUND, items[0])]
    for k in range(rounds):
        order += [(k, items[i]) for i in rng.permutation(len(items))]
    return order


def attempt(trial: Callable[..., dict], *args) -> tuple[dict, str]:
    """(the trial's row, "") or ({}, its error as "Type: message")."""
    try:
        return trial(*args), ""
    except Exception as exc:  # one failed trial is recorded; the run goes on
        return {}, f"{type(exc).__name__}: {exc}"


def require_some(df: pd.DataFrame, what: str) -> None:
    """A run whose every trial failed measured nothing: raise with the first error."""
    if (df["error"] != "").all():
        raise RuntimeError(f"every {what} failed; the first: {df['error'].iloc[0]}")
