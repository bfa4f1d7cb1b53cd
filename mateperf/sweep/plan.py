"""A sweep's plan: the grid parsed and checked, its points, the rounds, each round's share of a
phase's repetition parameters, and the seeded order in which every round visits the points."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from mateperf import phases
from mateperf.errors import ParameterError
from mateperf.params import coerce

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
    if phases.declared(phase).uses_model and "model" not in grid:  # one file for every point
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
