"""Old stored runs, upgraded on load: the one place that knows how the stored format changed.

`RunDir.read_frame` passes every frame through `upgrade`, so the analysis and the reports read
one current format and carry no "a run stored before ..." branches of their own. An upgrade
only adds or renames columns, from what the run itself stored (its rows and its parameters);
it never invents a measurement.
"""

from __future__ import annotations

import pandas as pd

from mateperf.metrics import WARMUP_FLAG

# The warm-up flag's names before it had one (llm runs of 2026-11-26: `discarded`).
OLD_WARMUP_FLAGS = ("discarded",)


def upgrade(df: pd.DataFrame) -> pd.DataFrame:
    """`df` in the current stored format (a new frame: unchanged, the same object)."""
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
