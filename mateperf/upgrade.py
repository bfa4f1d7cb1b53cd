"""Old stored runs, upgraded on load: the one place that knows how the stored format changed.

`RunDir.read_frame` passes every frame through `upgrade`, so the analysis and the reports read
one current format and carry no "a run stored before ..." branches of their own. An upgrade
only adds or renames columns, from what the run itself stored (its rows and its parameters);
it never invents a measurement.
"""

from __future__ import annotations

from pathlib import PurePath, PureWindowsPath

import pandas as pd

from mateperf import metrics
from mateperf.metrics import WARMUP_FLAG

# The warm-up flag's names before it had one (llm runs of 2026-11-26: `discarded`).
OLD_WARMUP_FLAGS = ("discarded",)


def upgrade(df: pd.DataFrame, phase: str = "") -> pd.DataFrame:
    """`df` in the current stored format (a new frame: unchanged, the same object)."""
    df = _warmup_flag(df)
    if phase == "ipc" and "record" not in df.columns:
        df = _ipc_trial_rows(df)
    if phase == "final" and "threads_source" in df.columns:
        df = _relative_source(df)
    if phase == "gpu":
        df = _gpu_profile_names(df)
    return df


def _relative_source(df: pd.DataFrame) -> pd.DataFrame:
    """final runs stored before sources were named relative to the results root held the
    absolute path of the recommended.json on the machine that ran them: `<run_id>/<file>`."""

    def relative(text) -> str:
        text = str(text)
        parts = PurePath(text).parts
        if not PurePath(text).is_absolute() and not PureWindowsPath(text).is_absolute():
            return text
        parts = PureWindowsPath(text).parts if "\\" in text else parts
        return "/".join(parts[-2:])

    values = df["threads_source"].map(relative)
    if values.equals(df["threads_source"]):
        return df
    return df.assign(threads_source=values)


# mateperf's own 81%-of-the-layers profile was called `balanced` (as the companion's profile,
# whose 35 layers are all of a 32-block model) until 2026-12-06.
OLD_PROFILE_NAMES = {"balanced": "layers_81pct"}
# The scenarios whose `profile` is mateperf's own (the target-card rows name the companion's).
_OWN_PROFILE_SCENARIOS = ("selection", "attempt", "profile")


def _gpu_profile_names(df: pd.DataFrame) -> pd.DataFrame:
    own = [c for c in ("selected_profile", "final_profile") if c in df.columns]
    scenario = df["scenario"] if "scenario" in df.columns else None
    rows_named = "profile" in df.columns and scenario is not None
    old = set(OLD_PROFILE_NAMES)
    if not any(df[c].isin(old).any() for c in own) and not (
        rows_named and (df["profile"].isin(old) & scenario.isin(_OWN_PROFILE_SCENARIOS)).any()
    ):
        return df
    out = df.copy()
    for c in own:
        out[c] = out[c].replace(OLD_PROFILE_NAMES)
    if rows_named:
        mine = scenario.isin(_OWN_PROFILE_SCENARIOS)
        out.loc[mine, "profile"] = out.loc[mine, "profile"].replace(OLD_PROFILE_NAMES)
    return out


def _warmup_flag(df: pd.DataFrame) -> pd.DataFrame:
    old = [flag for flag in OLD_WARMUP_FLAGS if flag in df.columns]
    if not old:
        return df
    out = df.copy()
    flags = [out[f].fillna(False).astype(bool) for f in old]
    if WARMUP_FLAG in out.columns:
        flags.append(out[WARMUP_FLAG].fillna(False).astype(bool))
    warm = flags[0]
    for f in flags[1:]:
        warm = warm | f
    return out.drop(columns=old).assign(**{WARMUP_FLAG: warm})


def _ipc_trial_rows(df: pd.DataFrame) -> pd.DataFrame:
    """ipc frames stored before trial rows existed (`record` absent): each per-trial value was
    copied onto every request row of its arm and trial. The request rows become `request`
    rows with the copies blanked, and one `trial` row per arm and trial is rebuilt from them
    (from the rows that count: warm-ups and failed trials carry the same copies)."""
    copied = [m.name for m in metrics.IPC_METRICS if m.level == metrics.TRIAL]
    copied = [c for c in copied if c in df.columns]
    requests = df.assign(record="request", **{c: float("nan") for c in copied})
    if not copied:
        return requests
    kept = metrics.completed(df)
    keys = [c for c in (*metrics.IDENTITY["ipc"], *metrics.replicate_keys(kept)) if c in df]
    with_values = kept[kept[copied].notna().any(axis=1)]
    trials = with_values.groupby(keys, sort=False, dropna=False)[copied].first().reset_index()
    trials = trials.assign(record="trial", **{WARMUP_FLAG: False})
    return pd.concat([requests, trials], ignore_index=True, sort=False)
