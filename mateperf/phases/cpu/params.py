"""The cpu phase's parameters: the one schema (`mateperf.params`); the notebook repeats it.

Thread counts, batch sizes and loads are lists in strings (`-p n_threads=1,2`, `auto`,
`same`); `settings(params, usable)` expands them into the settings a run visits, and building
the dataclass checks that they expand.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

from mateperf import recommend
from mateperf.avatar import AVATAR_HELP, parse_address
from mateperf.errors import ParameterError
from mateperf.frame_budget import DEFAULT_SLACK_MS, SLACK_HELP
from mateperf.params import BACKGROUNDS, PEER_KINDS, Params, model_param, n_ctx_param, param, refuse


@dataclass(frozen=True)
class Setting:
    n_threads: int
    n_threads_batch: int
    n_batch: int
    n_ubatch: int
    background: str
    frame_busy: float  # 0 for idle

    @property
    def label(self) -> str:
        return (
            f"{recommend.condition_label(self.background, self.frame_busy)} "
            f"t={self.n_threads} tb={self.n_threads_batch} b={self.n_batch}/{self.n_ubatch}"
        )


def _items(name: str, text) -> list[str]:
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise ParameterError(f"parameter {name}={text!r}: give at least one value")
    return items


def _whole_numbers(name: str, text, what: str) -> list[int]:
    """A comma-separated list of whole numbers of at least 1, sorted, duplicates dropped."""
    values = []
    for item in _items(name, text):
        try:
            value = int(item)
        except ValueError:
            raise ParameterError(f"parameter {name}={text!r}: {item!r} is not {what}") from None
        if value < 1:
            raise ParameterError(f"parameter {name}={text!r}: {value} must be at least 1")
        values.append(value)
    return sorted(set(values))


def parse_threads(name: str, text, usable: int, same_as: list[int] | None = None) -> list[int]:
    """`auto` (1..usable), `same` (as n_threads) or a list of thread counts, each 1..usable."""
    word = str(text).strip().lower()
    if word == "auto":
        return list(range(1, usable + 1))
    if word == "same" and same_as is not None:
        return list(same_as)
    values = _whole_numbers(name, text, f"a thread count (use 'auto' or whole numbers 1..{usable})")
    if values[-1] > usable:
        raise ParameterError(
            f"parameter {name}={text!r}: {values[-1]} threads is more than the {usable} CPUs "
            "this process may use (affinity and cgroup quota)"
        )
    return values


def parse_sizes(name: str, text, same_as: list[int] | None = None) -> list[int]:
    if str(text).strip().lower() == "same" and same_as is not None:
        return list(same_as)
    return _whole_numbers(name, text, "a whole number")


def parse_loads(text) -> list[float]:
    values = []
    for item in _items("frame_busy", text):
        try:
            value = float(item)
        except ValueError:
            raise ParameterError(
                f"parameter frame_busy={text!r}: {item!r} is not a number"
            ) from None
        if not 0 <= value < 1:
            raise ParameterError(
                f"parameter frame_busy={text!r}: {value:g} is not a share of a frame (0 to <1)"
            )
        values.append(value)
    return sorted(set(values))


def settings(params: dict, usable: int) -> list[Setting]:
    """Every setting × background the run visits (batch pairs with n_ubatch > n_batch left out)."""
    threads = parse_threads("n_threads", params["n_threads"], usable)
    threads_batch = parse_threads("n_threads_batch", params["n_threads_batch"], usable, threads)
    batches = parse_sizes("n_batch", params["n_batch"])
    ubatches_text = params["n_ubatch"]
    same_ubatch = str(ubatches_text).strip().lower() == "same"
    ubatches = [] if same_ubatch else parse_sizes("n_ubatch", ubatches_text)
    pairs = (
        [(b, b) for b in batches]
        if same_ubatch
        else [(b, u) for b in batches for u in ubatches if u <= b]
    )
    if not pairs:
        raise ParameterError(
            f"parameters n_batch={params['n_batch']!r}, n_ubatch={ubatches_text!r}: every "
            "n_ubatch is larger than every n_batch"
        )
    names = _items("backgrounds", params["backgrounds"])
    for name in names:
        if name not in BACKGROUNDS:
            raise ParameterError(
                f"parameter backgrounds={params['backgrounds']!r}: {name!r} is not one of "
                f"{', '.join(BACKGROUNDS)}"
            )
    loads = []
    if "idle" in names:
        loads.append(("idle", 0.0))
    if "companion" in names:
        loads += [("companion", f) for f in parse_loads(params["frame_busy"])]
    thread_pairs = (
        [(t, t) for t in threads]
        if str(params["n_threads_batch"]).strip().lower() == "same"
        else list(itertools.product(threads, threads_batch))
    )
    return [
        Setting(t, tb, b, u, bg, busy)
        for (bg, busy), (t, tb), (b, u) in itertools.product(loads, thread_pairs, pairs)
    ]


@dataclass(frozen=True)
class CpuParams(Params):
    model: str = model_param()
    n_threads: str = param(
        "auto", "generation threads: auto (1 to the usable CPUs) or a list such as 1,2"
    )
    n_threads_batch: str = param(
        "same", "prompt threads: same (paired with n_threads), auto, or a list"
    )
    n_batch: str = param("512", "logical batch sizes to cross, e.g. 64,512", variant=4)
    n_ubatch: str = param(
        "same", "physical batch sizes: same (as each n_batch) or a list (above n_batch: skipped)"
    )
    backgrounds: str = param(
        "idle,companion", "loads beside the model: idle and/or companion", variant=3
    )
    frame_busy: str = param(
        "0.5", "companion: share(s) of each frame the avatar's main thread is busy", variant=2
    )
    peer: str = param(
        "python",
        "companion's frame-paced peer: python, or csharp (the C# core under Mono)",
        choices=PEER_KINDS,
        variant=1,
    )
    avatar: str = param("", AVATAR_HELP + "; the companion background then measures it")
    fps: float = param(
        60.0,
        "the spawned stand-in's frame rate and the frame budget's (1000/fps + frame_slack_ms); "
        "with avatar, the budget follows the attached avatar's own target_fps where it reports one",
        above=0,
    )
    frame_slack_ms: float = param(DEFAULT_SLACK_MS, SLACK_HELP, at_least=0)
    command_hz: float = param(
        10.0, "emotion commands per second streamed to the peer during a trial", at_least=0
    )
    trials: int = param(
        5,
        "per setting and load, at most (fewer once precise), after one warm-up trial (left out)",
        at_least=1,
    )
    precision_pct: float = param(
        3.0,
        "stop repeating a setting once its tg tokens/s median's 95% CI is within ±this %; "
        "0 runs every setting `trials` times",
        at_least=0,
    )
    min_trials: int = param(4, "trials before a setting may stop as precise", at_least=2)
    pp_tokens: int = param(128, "prompt-processing test size per trial (random tokens)", at_least=1)
    tg_tokens: int = param(48, "generation test size per trial", at_least=1)
    max_tokens: int = param(24, "length cap of the companion reply per trial", at_least=1)
    n_ctx: int = n_ctx_param(1024)
    tolerance: float = param(
        recommend.DEFAULT_TOLERANCE,
        "recommender: within this fraction of the best median",
        above=0,
    )
    seed: int = param(1234, "order of the settings in each round")

    def check(self) -> None:
        from mateperf.model import LlamaConfig
        from mateperf.trackers import cpu as cpu_detect

        if self.tolerance >= 1:
            refuse("tolerance", self.tolerance, "must be a fraction below 1")
        if self.avatar:
            parse_address(self.avatar)
        if self.pp_tokens + self.tg_tokens > self.n_ctx:
            refuse(
                "n_ctx",
                self.n_ctx,
                f"is too small for pp_tokens + tg_tokens = {self.pp_tokens + self.tg_tokens}",
            )
        for s in settings(self, cpu_detect.detect().usable):  # n_ubatch <= n_batch, ...
            LlamaConfig.from_params(asdict(s), model_path="-")
