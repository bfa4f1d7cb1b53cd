"""`mateperf tune`'s markdown: the settings per profile, their evidence, what was pruned, a plot."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mateperf import avatar_pacing, frame_budget, recommended_file
from mateperf.reports.companion_settings import untuned_sentence
from mateperf.reports.format import fmt, fmt_p, save_figure, table
from mateperf.tune.race import raced_medians
from mateperf.tune.space import Setting


def _profiles_table(rec: dict) -> pd.DataFrame:
    rows = []
    for name, e in rec["profiles"].items():
        s, m = e["settings"], e["measured"]
        rows.append(
            {
                "profile": name,
                "n_threads (gen/prompt)": f"{s['n_threads']}/{s['n_threads_batch']}",
                "n_batch": s["n_batch"],
                "n_gpu_layers": s["n_gpu_layers"],
                "n_ctx": s["n_ctx"],
                "KV cache": s["type_k"],
                "flash_attn": "on" if s["flash_attn"] else "off",
                "reply (ms)": fmt(m["reply_ms"], 0),
                "ttft (ms)": fmt(m["ttft_ms"], 0),
                "tokens/s": fmt(m["tg_tps"]),
                "frame p99 (ms)": fmt(m["frame_p99_ms"]),
                "within frame": "yes" if e["meets_frame_budget"] else "**no**",
                "VRAM (MiB)": fmt(m["vram_mb"], 0),
            }
        )
    return pd.DataFrame(rows)


ROLES = {"runner_up": "runner-up", "companion": "companion's own"}


def _evidence_table(rec: dict) -> pd.DataFrame:
    rows = []
    for name, e in rec["profiles"].items():
        for ev in e["evidence"]:
            low, high = ev["ratio_ci95"]
            rows.append(
                {
                    "profile": name,
                    "pick against": f"{ROLES.get(ev['against'], ev['against'])}: {ev['label']}",
                    "metric": ev["metric"],
                    "pick / other [95% CI]": f"{fmt(ev['ratio_pick_over_other'], 3)} "
                    f"[{fmt(low, 3)}, {fmt(high, 3)}]",
                    "p": fmt_p(ev["p_value"]),
                    "verdict": ev["verdict"],
                    "n": "+".join(map(str, ev["n"])),
                }
            )
    return pd.DataFrame(rows)


def _pruned(rec: dict) -> list[str]:
    lines = []
    for name, e in rec["profiles"].items():
        reasons = Counter(
            r.split(":")[0]
            if "build has no GPU offload" not in r
            else "no GPU offload in this build"
            for r in e["race"]["pruned"].values()
        )
        told = ", ".join(f"{n} {why}" for why, n in reasons.most_common()) or "none"
        lines.append(
            f"- {name}: {e['race']['settings']} settings, {e['race']['raced']} raced in "
            f"{e['race']['trials']} trials over {e['race']['rounds']} rounds; pruned: {told}. "
            f"{e['race']['note']}."
        )
    return lines


def _plot(trials: pd.DataFrame, rec: dict, plots_dir: Path, md_dir: Path) -> str:
    if not ((trials["stage"] == "race") & (trials["error"].fillna("") == "")).any():
        return ""
    fig, axes = plt.subplots(1, len(rec["profiles"]), figsize=(5 * len(rec["profiles"]), 4))
    for ax, (name, e) in zip(np.atleast_1d(axes), rec["profiles"].items(), strict=True):
        med = raced_medians(trials, name)
        ax.scatter(med["frame_p99_ms"], med["reply_ms"], s=18, color="0.5", label="raced")
        label = Setting(**{k: v for k, v in e["settings"].items() if k != "n_ubatch"}).label
        pick = med.loc[[c for c in med.index if c == label]]
        ax.scatter(pick["frame_p99_ms"], pick["reply_ms"], s=60, color="C3", label="pick")
        ax.axvline(rec["frame_budget_ms"], color="C0", ls="--", lw=1, label="frame budget")
        ax.set_title(name)
        ax.set_xlabel("avatar frame p99 (ms)")
        ax.set_ylabel(f"time to a {rec['reply_tokens']}-token reply (ms)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, plots_dir, "tune_race", md_dir, "tune race")


def _budget_basis(rec: dict) -> str:
    """How the frame budget was set, and what the avatar did alone (runs from before the
    slack have neither)."""
    if "frame_slack_ms" not in rec:
        return " (1000/fps)"
    idle = rec.get("frame_p99_idle_ms")
    alone = "" if idle is None else f"; the avatar alone, no model: {idle:.2f} ms"
    fps = f" at {rec['frame_fps']:g} fps ({rec['frame_fps_source']})" if "frame_fps" in rec else ""
    return f" (1000/fps {rec['frame_period_ms']:.2f} + slack {rec['frame_slack_ms']:g}{fps}{alone})"


CONSTRAINTS = {
    "frame_p99_ms": "its frame interval p99",
    "frame_gpu_p99_ms": "the larger of its frame interval p99 and its GPU frame time p99",
}


def _avatar_lines(rec: dict) -> list[str]:
    """Attached to a live avatar: what held the settings, and what it could not report."""
    if not rec.get("avatar"):
        return []
    who = rec["avatar"]
    held = CONSTRAINTS.get(rec.get("constraint") or "", "nothing (no frame figures)")
    missing = "; ".join(rec.get("avatar_unavailable") or []) or "nothing"
    return [
        f"Attached avatar: {who.get('peer')} at {who.get('address')}; the constraint was "
        f"{held}. What it could not report: {missing}.",
        "",
    ]


def section(rec: dict, trials: pd.DataFrame, plots_dir: Path, md_dir: Path) -> str:
    lines = [
        "## Tuned settings per companion profile",
        "",
        f"Objective: the time to a reply of fixed length (time to first token plus the tokens at "
        f"the measured generation rate), under the avatar's load; constraint: the avatar's "
        f"frame p99 within {rec['frame_budget_ms']:.2f} ms{_budget_basis(rec)}. "
        f"VRAM: {rec['vram_basis']}. "
        f"Wall time {rec['wall_s']:.0f} s, {rec['race_trials_measured']} race trials measured.",
        "",
        table(_profiles_table(rec)),
        "",
        *_avatar_lines(rec),
    ]
    if missing := recommended_file.not_tuned(rec):
        lines += [untuned_sentence(rec, missing), ""]
    if rec.get("avatar_pacing"):  # tune runs from before the overshoot was recorded have none
        idle = {k: float("nan") if v is None else v for k, v in rec["avatar_pacing"].items()}
        if line := avatar_pacing.sentence(idle):
            lines += [f"{line} (the avatar alone, before the race)", ""]
    if warning := frame_budget.idle_warning(rec):
        lines += [f"**{warning[0].upper()}{warning[1:]}.**", ""]
    notes = [f"- {n}: {e['note']}" for n, e in rec["profiles"].items() if e.get("note")]
    if notes:
        lines += ["**Frame budget, per profile:**", "", *notes, ""]
    intent = [e["companion_intent"] for e in rec["profiles"].values() if e.get("companion_intent")]
    lines += [
        "### Evidence (interleaved confirmation trials)",
        "",
        table(_evidence_table(rec)),
        "",
        *(
            ["The companion's own profile, as llama.cpp loads it on this model:", *intent, ""]
            if intent
            else []
        ),
        "### The race",
        "",
        *_pruned(rec),
        "",
    ]
    plot = _plot(trials, rec, plots_dir, md_dir)
    if plot:
        lines += [plot, ""]
    return "\n".join(lines)
