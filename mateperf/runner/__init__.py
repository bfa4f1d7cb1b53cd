"""The one trial runner: visit order, warm-up, the failed-trial record, progress, the lock.

Every phase that repeats runs its trials through `run_trials`:

- **Visit order** (`interleaved`, `abba`): phases that compare settings inside one run visit
  every setting once per round, each round in a seeded random order (or, for a pair of arms,
  in balanced ABBA order), so a drift of the host hits every setting alike.
- **Warm-up**: the first visit (round `WARMUP_ROUND`, -1) warms the process and the page cache;
  its row is kept, marked `is_warmup`, and left out of every statistic. Where each item pays
  its own first cost (a different model file or layer split to map), the warm-up round visits
  every item (`interleaved(..., warm_every=True)`).
- **A failed trial** is recorded with its error ("Type: message" in `error`) and the run goes
  on; a run whose every trial failed is a failure (`require_some`). A `RunAborted` (an
  attached avatar that went away) ends the run instead: it is re-raised carrying every row so
  far, the failed trial's included, for the phase to keep.
- **Progress**: one line per trial, `[phase] i/n label: figures`, through `mateperf.progress`.
- **Adaptive repetition** (`run_until_precise`, `run_rounds` with a precision): a point repeats
  until its figures' CIs are within the target or it reaches its cap (mateperf.runner.adaptive).
- **The lock** (`mateperf.runner.lock`): one measurement at a time per results root.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import pandas as pd

from mateperf import progress
from mateperf.errors import RunAborted
from mateperf.runner import adaptive

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


def interleaved(
    items: Sequence[T], rounds: int, rng: np.random.Generator, warm_every: bool = False
) -> list[Visit[T]]:
    """The first item as a warm-up, then every item once per round, each round shuffled.

    `warm_every`: the warm-up round visits every item, shuffled like the others.
    """
    first = WARMUP_ROUND if warm_every else 0
    order = [] if warm_every else [Visit(WARMUP_ROUND, items[0])]
    for k in range(first, rounds):
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
    except RunAborted:
        raise  # the whole run ends (run_trials keeps the rows so far)
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
    first_index: int = 0,
) -> list[dict]:
    """Run every visit; one row per trial (or the rows a trial returns), failures recorded.

    `base(visit)` gives the identity columns of a visit's rows (scenario, arm, setting); the
    runner adds `trial` (the round), `is_warmup`, `visit` (the running index) and `error`.
    `describe(visit, row)` is the progress line's text after "i/n label:" for a trial that
    succeeded; a failed one says FAILED and its error. `label(item)` names the item.
    `first_index`: the `visit` number of the first visit (a run made of several calls).
    A row may carry its own `error` (a trial that records its failure with what it measured,
    as the gpu phase's do); the runner's "" is only the default.
    """
    visits = list(visits)
    total = total if total is not None else first_index + len(visits)
    say = progress.reporter(phase)
    rows: list[dict] = []
    for i, visit in enumerate(visits, first_index):
        ident = {
            **(base(visit) if base else {}),
            "trial": visit.round,
            "is_warmup": visit.is_warmup,
            "visit": i,
        }
        name = label(visit.item) + (" (warm-up)" if visit.is_warmup else "")
        try:
            result, error = attempt(trial, visit)
        except RunAborted as exc:
            say(f"{i + 1}/{total} {name}: ABORTED {exc}")
            exc.rows = [*rows, {**ident, "error": f"{type(exc).__name__}: {exc}"}]
            raise
        if error:
            say(f"{i + 1}/{total} {name}: FAILED {error}")
            rows.append({**ident, "error": error})
            continue
        produced = result if isinstance(result, list) else [result]
        rows += [{**ident, "error": "", **row} for row in produced]
        say(f"{i + 1}/{total} {name}: {describe(visit, produced[0] if produced else {})}")
    return rows


@contextmanager
def _keeping(rows: list[dict]):
    """A RunAborted inside leaves with the rows of earlier calls before its own."""
    try:
        yield
    except RunAborted as exc:
        exc.rows = [*rows, *exc.rows]
        raise


def require_some(df: pd.DataFrame, what: str) -> None:
    """A run whose every trial failed measured nothing: raise with the first error."""
    if "error" in df and (df["error"] != "").all():
        raise RuntimeError(f"every {what} failed; the first: {df['error'].iloc[0]}")


def run_until_precise(
    phase: str,
    items: Sequence[T],
    trial: Callable[[Visit[T]], dict | list[dict]],
    describe: Callable[[Visit[T], dict], str],
    figure: Callable[[dict | list[dict]], float],
    precision: adaptive.Precision,
    rng: np.random.Generator,
    base: Callable[[Visit[T]], dict] | None = None,
    label: Callable[[T], str] = str,
) -> list[dict]:
    """Adaptive repetition: rounds until every item's `figure` is precise, or at the cap.

    A warm-up visit of the first item, then rounds: each visits the items still going
    (mateperf.runner.adaptive: their median's CI half-width above the target and fewer than
    `max_reps` trials), once each, in a shuffled order. `figure(result)` is the one number of a
    trial the precision is judged on (a failed trial counts toward the cap). Every row of an
    item carries how its repetition stopped: `stop_reason` (precise or cap), `stop_trials` and
    `stop_half_width` (relative), so the rule's decision is stored with the data.
    """
    keys = {label(item): item for item in items}
    values: dict[str, list[float]] = {name: [] for name in keys}

    def tracked(visit: Visit[T]):
        try:
            result = trial(visit)
        except Exception:
            if not visit.is_warmup:
                values[label(visit.item)].append(float("nan"))
            raise
        if not visit.is_warmup:
            values[label(visit.item)].append(float(figure(result)))
        return result

    rows: list[dict] = []
    # the progress total is fixed from the start: the most trials the cap allows (a total that
    # grew round by round, 1/1, 2/5, ..., told a person nothing about how long is left)
    cap = 1 + len(items) * precision.max_reps
    with _keeping(rows):
        rows += run_trials(
            phase, [Visit(WARMUP_ROUND, items[0])], tracked, describe, base, total=cap, label=label
        )
    owner = {0: label(items[0])}
    k = 0
    while going := adaptive.next_round(values, precision, rng):
        visits = [Visit(k, keys[name], pos) for pos, name in enumerate(going)]
        first = len(owner)
        owner.update({first + i: name for i, name in enumerate(going)})
        with _keeping(rows):
            rows += run_trials(
                phase,
                visits,
                tracked,
                describe,
                base,
                total=cap,
                label=label,
                first_index=first,
            )
        k += 1
    if len(owner) < cap:
        progress.say(phase, f"{len(owner)} of at most {cap} trials: the rest were precise already")
    stops = {name: adaptive.decision(v, precision) for name, v in values.items()}
    for row in rows:
        stop = stops[owner[row["visit"]]]
        row.update(stop_reason=stop.reason, stop_trials=stop.n, stop_half_width=stop.half_width)
    return rows


@dataclass(frozen=True)
class Stream(Generic[T]):
    """Visits that recur every round, with their own cap and the figures they stop on.

    `visits(k)`: the stream's visits in round k (WARMUP_ROUND first); `figures(visit, result)`:
    the numbers its precision is judged on, by name (a trial may give several, e.g. pp and tg);
    `rounds`: its cap, not counting the warm-up round.
    """

    name: str
    visits: Callable[[int], list[Visit[T]]]
    figures: Callable[[Visit[T], dict | list[dict]], dict[str, float]]
    rounds: int


def run_rounds(
    phase: str,
    streams: Sequence[Stream[T]],
    trial: Callable[[Visit[T]], dict | list[dict]],
    describe: Callable[[Visit[T], dict], str],
    base: Callable[[Visit[T]], dict] | None = None,
    label: Callable[[T], str] = str,
    precision: adaptive.Precision | None = None,
) -> list[dict]:
    """Round by round, every stream's visits of that round, until each stream is done.

    Without `precision` every stream runs its `rounds`. With one (adaptive repetition), a
    stream stops after the first round from `precision.min_reps` on where every figure it
    tracks is precise, else at its `rounds`; a failed trial counts toward the cap. Then each of
    its rows carries `stop_reason` (precise or cap), `stop_trials` and `stop_half_width` (the
    widest of its figures), so the rule's decision is stored with the data.
    """
    values: dict[str, dict[str, list[float]]] = {s.name: {} for s in streams}
    done: dict[str, int] = {s.name: 0 for s in streams}  # rounds run, warm-up not counted
    stops: dict[str, adaptive.Stop] = {}  # the streams that stopped, and why
    total = sum(len(s.visits(k)) for s in streams for k in range(WARMUP_ROUND, s.rounds))
    rows: list[dict] = []
    owner: list[str] = []  # the stream of each visit, by its index

    for k in range(WARMUP_ROUND, max(s.rounds for s in streams)):
        running = [s for s in streams if s.name not in stops and k < s.rounds]
        of: dict[Visit[T], Stream[T]] = {v: s for s in running for v in s.visits(k)}
        if not of:
            break

        def tracked(visit: Visit[T], of=of):
            kept = values[of[visit].name]
            try:
                result = trial(visit)
            except Exception:
                for figure in kept.values() if not visit.is_warmup else ():
                    figure.append(float("nan"))
                raise
            if not visit.is_warmup:
                for name, value in of[visit].figures(visit, result).items():
                    kept.setdefault(name, []).append(float(value))
            return result

        with _keeping(rows):
            rows += run_trials(
                phase, list(of), tracked, describe, base, total, label, first_index=len(owner)
            )
        owner += [of[v].name for v in of]
        for s in running if precision is not None and k >= 0 else ():
            done[s.name] += 1
            stop = _stream_stop(values[s.name], precision, s, done[s.name])
            if stop.done:
                stops[s.name] = stop
    if precision is not None:
        for row in rows:
            stop = stops[owner[row["visit"]]]
            row.update(stop_reason=stop.reason, stop_trials=stop.n, stop_half_width=stop.half_width)
    return rows


def _stream_stop(
    figures: dict[str, list[float]], precision: adaptive.Precision, stream: Stream, done_rounds: int
) -> adaptive.Stop:
    """Precise when every figure is (from min_reps rounds on), else cap at the stream's
    rounds; the widest half-width of its figures."""
    min_reps = max(2, min(precision.min_reps, stream.rounds))
    widths = [adaptive.half_width(v, precision.confidence) for v in figures.values()]
    widest = max(widths, default=float("inf"))
    if done_rounds >= min_reps and widest <= precision.target:
        return adaptive.Stop(True, adaptive.PRECISE, done_rounds, widest)
    if done_rounds >= stream.rounds:
        return adaptive.Stop(True, adaptive.CAP, done_rounds, widest)
    return adaptive.Stop(False, "", done_rounds, widest)
