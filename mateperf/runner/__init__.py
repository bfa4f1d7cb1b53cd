"""The one trial runner: visit order, warm-up, the failed-trial record, progress, the lock.

Every phase that repeats runs its trials through `run_trials`:

- **Visit order** (`interleaved`, `abba`): phases that compare settings inside one run visit
  every setting once per round, each round in a seeded random order (or, for a pair of arms,
  in balanced ABBA order), so a drift of the host hits every setting alike.
- **Warm-up**: the first visit (round `WARMUP_ROUND`, -1) warms the process and the page cache;
  its row is kept, marked `is_warmup`, and left out of every statistic.
- **A failed trial** is recorded with its error ("Type: message" in `error`) and the run goes
  on; a run whose every trial failed is a failure (`require_some`).
- **Progress**: one line per trial, `[phase] i/n label: figures`, through `mateperf.progress`.
- **The lock** (`mateperf.runner.lock`): one measurement at a time per results root.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import pandas as pd

from mateperf import progress

T = TypeVar("T")
WARMUP_ROUND = -1


@dataclass(frozen=True)
class Visit(Generic[T]):
    """One trial to run: its round (-1: the warm-up), the item visited, and its position."""

    round: int
    item: T
    position: int = 0  # within its round (ABBA: which arm went first)

    @property
    def is_warmup(self) -> bool:
        return self.round < 0


def interleaved(items: Sequence[T], rounds: int, rng: np.random.Generator) -> list[Visit[T]]:
    """The first item as a warm-up, then every item once per round, each round shuffled."""
    order = [Visit(WARMUP_ROUND, items[0])]
    for k in range(rounds):
        order += [Visit(k, items[i], pos) for pos, i in enumerate(rng.permutation(len(items)))]
    return order


def abba(a: T, b: T, rounds: int, warmup: bool = True) -> list[Visit[T]]:
    """Pairs in balanced order: a-b, b-a, a-b, ...; the first pair a warm-up when `warmup`.

    Each arm runs first in half of the pairs, so a drift or a carry-over from the previous
    trial hits both alike.
    """
    first = WARMUP_ROUND if warmup else 0
    order = []
    for k in range(first, rounds):
        pair = (a, b) if (k - first) % 2 == 0 else (b, a)
        order += [Visit(k, arm, pos) for pos, arm in enumerate(pair)]
    return order


def attempt(trial: Callable[..., T], *args) -> tuple[T | None, str]:
    """(the trial's result, "") or (None, its error as "Type: message")."""
    try:
        return trial(*args), ""
    except Exception as exc:  # one failed trial is recorded; the run goes on
        return None, f"{type(exc).__name__}: {exc}"


def run_trials(
    phase: str,
    visits: Iterable[Visit[T]],
    trial: Callable[[Visit[T]], dict | list[dict]],
    describe: Callable[[Visit[T], dict], str],
    base: Callable[[Visit[T]], dict] | None = None,
    total: int | None = None,
    label: Callable[[T], str] = str,
) -> list[dict]:
    """Run every visit; one row per trial (or the rows a trial returns), failures recorded.

    `base(visit)` gives the identity columns of a visit's rows (scenario, arm, setting); the
    runner adds `trial` (the round), `is_warmup`, `visit` (the running index) and `error`.
    `describe(visit, row)` is the progress line's text after "i/n label:" for a trial that
    succeeded; a failed one says FAILED and its error. `label(item)` names the item.
    """
    visits = list(visits)
    total = total if total is not None else len(visits)
    say = progress.reporter(phase)
    rows: list[dict] = []
    for i, visit in enumerate(visits):
        ident = {
            **(base(visit) if base else {}),
            "trial": visit.round,
            "is_warmup": visit.is_warmup,
            "visit": i,
        }
        name = label(visit.item) + (" (warm-up)" if visit.is_warmup else "")
        result, error = attempt(trial, visit)
        if error:
            say(f"{i + 1}/{total} {name}: FAILED {error}")
            rows.append({**ident, "error": error})
            continue
        produced = result if isinstance(result, list) else [result]
        rows += [{**ident, **row, "error": ""} for row in produced]
        say(f"{i + 1}/{total} {name}: {describe(visit, produced[0] if produced else {})}")
    return rows


def require_some(df: pd.DataFrame, what: str) -> None:
    """A run whose every trial failed measured nothing: raise with the first error."""
    if "error" in df and (df["error"] != "").all():
        raise RuntimeError(f"every {what} failed; the first: {df['error'].iloc[0]}")
