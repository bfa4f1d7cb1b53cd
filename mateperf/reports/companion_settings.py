"""FINAL_RESULTS.md's "Settings for the companion": what `mateperf tune` answered, per profile.

Formats a tune run's stored recommended.json (the figures, the evidence and the companion's
loader entry were computed when it ran): per profile the pick, its reply time, time to first
token, tokens/s, frame p99 against the budget, VRAM and where that figure comes from, the
evidence against the companion's own settings, and the line the companion's loader needs.
"""

from __future__ import annotations

import pandas as pd

from mateperf import frame_budget, recommended_file
from mateperf.reports.format import fmt, table

TITLE = "## Settings for the companion"


def _setting(s: dict) -> str:
    kv = s.get("type_k", "f16")
    return (
        f"threads {s['n_threads']}/{s['n_threads_batch']}, batch {s['n_batch']}/"
        f"{s['n_ubatch']}, layers {s['n_gpu_layers']}, ctx {s['n_ctx']}, KV {kv}, flash "
        f"{'on' if s.get('flash_attn') else 'off'}"
    )


def _vram(m: dict) -> str:
    if m.get("vram_mb") is None:
        return f"– ({m.get('vram_basis', 'not read')})"
    basis = str(m.get("vram_basis", "")).split(":")[0]  # "measured" or "predicted (...)"
    return f"{fmt(m['vram_mb'], 0)} MiB, {basis}"


def _against_own(entry: dict) -> str:
    """The pick against the companion's own profile: reply time and frame p99, ratio [CI]
    (the runner-up's evidence where the companion's own setting is the runner-up)."""
    role = entry.get("companion_role", "companion")
    if role == "pick":
        return f"the pick is the companion's own ({entry.get('companion_profile', '')})"
    parts = []
    for ev in entry.get("evidence", []):
        if ev.get("against") != role:
            continue
        low, high = ev["ratio_ci95"]
        what = "reply" if ev["metric"] == "reply_ms" else "frame p99"
        parts.append(
            f"{what} ×{fmt(ev['ratio_pick_over_other'], 2)} [{fmt(low, 2)}, {fmt(high, 2)}] "
            f"{ev['verdict']}"
        )
    same = " (its own is the runner-up here)" if role == "runner_up" and parts else ""
    return "; ".join(parts) + same if parts else "–"


def untuned_sentence(rec: dict, missing: list[str]) -> str:
    """Which of the companion's profiles this tune left out, and how to tune them."""
    return (
        f"Tuned: {', '.join(rec['profiles'])}. **Not tuned: {', '.join(missing)}** (the run "
        "named its profiles with `-p profiles=`): the companion keeps its own settings there; "
        f"`mateperf tune -p profiles={','.join(missing)}` measures them."
    )


def section(rec: dict, run_id: str) -> str:
    """The section for a tune run's recommended.json (`run_id` links its report)."""
    rows = []
    for name, e in rec["profiles"].items():
        s, m = e["settings"], e["measured"]
        rows.append(
            {
                "profile": name,
                "pick": _setting(s),
                "reply ms": fmt(m.get("reply_ms"), 0),
                "TTFT ms": fmt(m.get("ttft_ms"), 0),
                "tokens/s": fmt(m.get("tg_tps")),
                "frame p99 ms": f"{fmt(m.get('frame_p99_ms'), 2)} "
                + ("kept" if e.get("meets_frame_budget") else "**over**"),
                "VRAM": _vram(m),
                "against the companion's own": _against_own(e),
            }
        )
    budget = rec.get("frame_budget_ms")
    idle = rec.get("frame_p99_idle_ms")
    lines = [
        TITLE,
        "",
        f"`mateperf tune` ([`{run_id}`]({run_id}/tune.md)), under the avatar's load: the "
        f"fastest reply of {rec.get('reply_tokens', '?')} tokens whose avatar frame p99 keeps "
        f"the budget of {fmt(budget, 2)} ms (1000/fps + slack; the avatar alone "
        f"{fmt(idle, 2)} ms), the rule the cpu phase's recommendation uses too. VRAM: "
        f"{rec.get('vram_basis', '?')}. Against the companion's own: pick / own, ratio of "
        "medians [95% CI] and the rank test's verdict, over interleaved confirmation trials.",
        "",
        table(pd.DataFrame(rows)),
        "",
    ]
    if missing := recommended_file.not_tuned(rec):
        lines += [untuned_sentence(rec, missing), ""]
    if warning := frame_budget.idle_warning(rec):
        lines += [f"**{warning[0].upper()}{warning[1:]}.**", ""]
    notes = [f"- {n}: {e['note']}" for n, e in rec["profiles"].items() if e.get("note")]
    lines += [*notes, ""] if notes else []
    loaders = [e.get("companion") for e in rec["profiles"].values() if e.get("companion")]
    if loaders:
        needs = sorted({k for c in loaders for k in c["needs_loader_line"]})
        lines += [
            f"**Required in the companion** ({loaders[0]['loader_where']}), one added line in "
            f"the `Llama(...)` call: `{loaders[0]['loader_line']}` — without it "
            + (
                f"{', '.join(needs)} run at llama-cpp-python's defaults, not as tuned"
                if needs
                else "nothing tuned is lost on this host"
            )
            + f". Each profile's GPU_PROFILES entry: `{run_id}/recommended.json` "
            "(`profiles.<name>.companion.gpu_profiles_entry`); docs/tune.md.",
            "",
        ]
    return "\n".join(lines)
