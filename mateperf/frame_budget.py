"""The one rule for "keeps the avatar's frame": every recommender and report reads it here.

A setting keeps the avatar's frame when the avatar's frame-interval p99, measured while the
model works beside it, is at most one frame (1000/fps ms) plus `slack_ms`. The slack is the
pacing's own jitter: a timer-paced loop alone, with no model running, measured 16.7-17.7 ms at
60 fps on a 2-vCPU VM, so a strict 16.67 ms would call every setting over. The avatar alone
is measured first (`idle_p99_ms`), so that a host which cannot pace its frames even with no
model is told apart from a setting that breaks them.

Where no setting keeps the frame, the recommender chooses the least overrun and says so in
`none_kept`'s words; `mateperf tune`, the cpu phase's recommended.json and the final report
all use this module, so two recommenders on one host cannot disagree about the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from mateperf.avatar import AvatarIdentity

FRAME_METRIC = "frame_p99_ms"
# where a budget's fps came from: the run's parameter (the spawned stand-in's rate), or the
# attached avatar's own pacing target from its identity query (tune and cpu alike)
FPS_FROM_PARAM = "-p fps"
FPS_FROM_AVATAR = "the attached avatar's target_fps"
DEFAULT_SLACK_MS = 1.0
IDLE_OVER = (
    "this host does not hold its frames within it even with no model, so a setting's kept or "
    "over says as much about the host's pacing as about the setting"
)
SLACK_HELP = (
    "how far a frame p99 may pass 1000/fps and still count as kept: a timer-paced loop's "
    "own jitter (the peer alone measured 16.7-17.7 ms at 60 fps on a 2-vCPU VM); 0: strict"
)


def keeps(frame_p99_ms: float | None, budget_ms: float) -> bool:
    """The rule itself: a frame p99 (a finite number) at most the budget."""
    if frame_p99_ms is None:
        return False
    value = float(frame_p99_ms)
    return math.isfinite(value) and value <= budget_ms


@dataclass(frozen=True)
class FrameBudget:
    """One frame plus slack at `fps`, and what the avatar alone did (where measured)."""

    fps: float
    slack_ms: float = DEFAULT_SLACK_MS
    idle_p99_ms: float | None = None  # the avatar alone, no model: measured first
    fps_source: str = FPS_FROM_PARAM

    def __post_init__(self):
        if not self.fps > 0:
            raise ValueError(f"frame budget: fps must be above 0, got {self.fps!r}")
        if self.slack_ms < 0:
            raise ValueError(f"frame budget: slack_ms must be at least 0, got {self.slack_ms!r}")

    @property
    def period_ms(self) -> float:
        return 1e3 / self.fps

    @property
    def budget_ms(self) -> float:
        return self.period_ms + self.slack_ms

    def keeps(self, frame_p99_ms: float | None) -> bool:
        return keeps(frame_p99_ms, self.budget_ms)

    def overrun_ms(self, frame_p99_ms: float) -> float:
        """How far over the budget (<= 0: kept)."""
        return float(frame_p99_ms) - self.budget_ms

    @property
    def idle_over(self) -> bool:
        """The avatar alone is already over: every setting will be, whatever it does."""
        return self.idle_p99_ms is not None and not self.keeps(self.idle_p99_ms)

    def describe(self) -> str:
        alone = (
            ""
            if self.idle_p99_ms is None
            else f"; the avatar alone, no model: frame p99 {self.idle_p99_ms:.2f} ms"
        )
        return (
            f"frame budget {self.budget_ms:.2f} ms (1000/fps {self.period_ms:.2f} + slack "
            f"{self.slack_ms:g}) at {self.fps:g} fps ({self.fps_source}){alone}"
        )

    def idle_warning(self) -> str:
        return (
            f"even with no model running the avatar's frame p99 is over the budget: {IDLE_OVER}"
            if self.idle_over
            else ""
        )

    def none_kept(self, where: str = "") -> str:
        """What a recommender says where no setting kept the frame (tune and cpu alike)."""
        return (
            f"no setting kept the avatar's frame p99 within {self.budget_ms:.2f} ms"
            f"{' ' + where if where else ''} on this host: the least overrun was chosen"
        )

    def record(self) -> dict:
        """The budget's fields as recommended.json stores them."""
        return {
            "frame_budget_ms": round(self.budget_ms, 3),
            "frame_fps": self.fps,
            "frame_fps_source": self.fps_source,
            "frame_period_ms": round(self.period_ms, 3),
            "frame_slack_ms": self.slack_ms,
            "frame_p99_idle_ms": None
            if self.idle_p99_ms is None or not math.isfinite(self.idle_p99_ms)
            else round(float(self.idle_p99_ms), 4),
        }


def idle_warning(rec: dict) -> str:
    """The warning for a stored recommended.json whose avatar alone was over its budget
    ("" where it kept it or was not measured first)."""
    idle, budget = rec.get("frame_p99_idle_ms"), rec.get("frame_budget_ms")
    if idle is None or budget is None or keeps(idle, budget):
        return ""
    return (
        f"the avatar alone, no model, had a frame p99 of {idle:.2f} ms, over the budget of "
        f"{budget:.2f} ms: {IDLE_OVER}"
    )


def budget_fps(param_fps: float, identity: AvatarIdentity | None) -> tuple[float, str]:
    """The fps a budget is set at, and where it came from: an attached avatar's own pacing
    target where it reports one (its frames are judged against its frame, not the stand-in's),
    else the run's `fps` parameter."""
    if identity is None:
        return param_fps, FPS_FROM_PARAM
    fps = identity.frame_rate(0.0)
    if fps > 0:
        return fps, FPS_FROM_AVATAR
    return param_fps, f"{FPS_FROM_PARAM}: the attached avatar reports no target_fps"


def from_frame(d: pd.DataFrame) -> FrameBudget:
    """The budget a stored frame was measured against: its `frame_fps` and `frame_fps_source`
    columns (older runs: `fps`, the parameter), `frame_slack_ms` (a run from before the slack
    was a parameter: the default) and the avatar alone's p99 (`frame_p99_idle_ms`, the worst
    load's) where it was measured first."""
    column = "frame_fps" if "frame_fps" in d.columns else "fps"
    fps = float(d[column].iloc[0]) if column in d.columns and len(d) else 60.0
    source = (
        str(d["frame_fps_source"].iloc[0])
        if "frame_fps_source" in d.columns and len(d)
        else FPS_FROM_PARAM
    )
    slack = (
        float(d["frame_slack_ms"].iloc[0])
        if "frame_slack_ms" in d.columns and len(d)
        else DEFAULT_SLACK_MS
    )
    idle = d["frame_p99_idle_ms"].dropna() if "frame_p99_idle_ms" in d.columns else ()
    return FrameBudget(fps, slack, float(idle.max()) if len(idle) else None, source)


def worst_by_setting(rows: pd.DataFrame, by: tuple[str, ...]) -> dict[tuple, float]:
    """Each setting's frame p99 as the rule judges it: the median of its trials at each load
    (`frame_busy`), the worst load's. {} where no frame was measured."""
    if FRAME_METRIC not in rows.columns:
        return {}
    rows = rows[rows[FRAME_METRIC].notna()]
    if rows.empty:
        return {}
    loads = ["frame_busy"] if "frame_busy" in rows.columns else []
    med = rows.groupby([*by, *loads], sort=True)[FRAME_METRIC].median()
    worst = med.groupby(level=list(range(len(by)))).max() if loads else med
    return {
        tuple(int(k) for k in (key if isinstance(key, tuple) else (key,))): float(v)
        for key, v in worst.items()
    }
