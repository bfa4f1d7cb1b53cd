"""`mateperf tune`'s parameters (`-p NAME=VALUE`): one frozen dataclass, as a phase's are."""

from __future__ import annotations

from dataclasses import dataclass

from mateperf.avatar import AVATAR_HELP, parse_address
from mateperf.frame_budget import DEFAULT_SLACK_MS, SLACK_HELP
from mateperf.gpu.profiles import COMPANION_CARD_MB
from mateperf.params import KV_CACHE_TYPES, PEER_KINDS, Params, model_param, param, refuse
from mateperf.tune.space import RULES, Axes, ProfileRule, kv_choices

PROFILE_NAMES = tuple(rule.name for rule in RULES)


@dataclass(frozen=True)
class TuneParams(Params):
    model: str = model_param()
    profiles: str = param(
        ",".join(PROFILE_NAMES),
        "the companion's profiles to tune (a comma list): only balanced, the one the companion "
        "runs by default, tunes in about a third of the time",
    )
    vram_budget_mb: int = param(
        COMPANION_CARD_MB,
        "the card to fit (MiB): 6144 is the companion's RTX 4050; 0 means this GPU's free VRAM",
        at_least=0,
    )
    margin_mb: int = param(512, "VRAM kept free beyond the prediction", at_least=0)
    peer: str = param(
        "python",
        "the avatar's peer: python, or csharp (the C# core under Mono)",
        choices=PEER_KINDS,
    )
    avatar: str = param("", AVATAR_HELP + " (--avatar); its frame p99 is the constraint")
    fps: float = param(
        60.0,
        "the avatar's frame rate; its frame budget is 1000/fps + frame_slack_ms (an attached "
        "avatar's own target frame rate where it reports one)",
        above=0,
    )
    frame_slack_ms: float = param(DEFAULT_SLACK_MS, SLACK_HELP, at_least=0)
    frame_busy: float = param(
        0.5, "share of each frame the avatar's main thread is busy", at_least=0, at_most=0.95
    )
    command_hz: float = param(10.0, "emotion commands per second during a reply", at_least=0)
    reply_tokens: int = param(
        32, "reply length: the objective is the time to a reply of this many tokens", at_least=1
    )
    max_rounds: int = param(4, "race: the most trials any setting gets", at_least=2)
    min_reps: int = param(4, "race: trials before a setting can be dropped as worse", at_least=2)
    eta: int = param(
        4,
        "race: after each round only the best 1/eta of the settings stay (two at least)",
        at_least=2,
    )
    confirm_reps: int = param(
        5, "trials each of the pick, the runner-up and the companion's own profile", at_least=2
    )
    n_batch: str = param("128,512", "batch sizes to try (n_ubatch the same)")
    kv_types: str = param("f16,q8_0", "KV cache types to try (a quantised one needs flash_attn on)")
    flash_attn: str = param("off,on", "flash attention settings to try: off, on or both")
    seed: int = param(1234, "order of the trials in each round")

    def check(self) -> None:
        self.rules()
        self.axes()
        if self.avatar:
            parse_address(self.avatar)

    def rules(self) -> tuple[ProfileRule, ...]:
        """The profiles to tune, in RULES' order (performance, balanced, cpu_fallback)."""
        names = _items("profiles", self.profiles)
        for name in names:
            if name not in PROFILE_NAMES:
                refuse(
                    "profiles",
                    self.profiles,
                    f": no companion profile {name!r} (choose from {', '.join(PROFILE_NAMES)})",
                )
        return tuple(rule for rule in RULES if rule.name in names)

    def axes(self) -> Axes:
        """The values tried of the settings a profile does not fix, parsed and checked."""
        batches = _items("n_batch", self.n_batch)
        try:
            sizes = tuple(sorted({int(b) for b in batches}))
        except ValueError:
            refuse("n_batch", self.n_batch, "must be comma-separated whole numbers")
        if sizes[0] < 1:
            refuse("n_batch", self.n_batch, "must be at least 1 each")
        types = _items("kv_types", self.kv_types)
        if any(t not in KV_CACHE_TYPES for t in types):
            refuse("kv_types", self.kv_types, f"must be chosen from {', '.join(KV_CACHE_TYPES)}")
        words = {"off": False, "on": True}
        flash = _items("flash_attn", self.flash_attn)
        if any(w not in words for w in flash):
            refuse("flash_attn", self.flash_attn, "must be off, on, or off,on")
        kv = kv_choices(types, sorted({words[w] for w in flash}))
        if not kv:
            refuse("kv_types", self.kv_types, "are all quantised: they need flash_attn on")
        return Axes(sizes, tuple(kv))


def _items(name: str, text: str) -> list[str]:
    items = [s.strip().lower() for s in str(text).split(",") if s.strip()]
    if not items:
        refuse(name, text, "must name at least one value")
    return items
