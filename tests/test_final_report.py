"""FINAL_RESULTS.md's layout: the summary on the first screen whatever the number of hosts,
the companion's settings from `mateperf tune` beside it, every phase in brief with its full
report one link away, no path of the machine that ran it, at most 450 lines."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from mateperf import recommended_file, report, results
from mateperf.host import fingerprint

LIMIT_LINES = 450
FIRST_SCREEN = 12  # lines: the title, the command and hosts line, then the summary


ALL_PROFILES = {"performance": 2, "balanced": 1, "cpu_fallback": 1}  # name: n_threads


def tune_run(root, fp: dict, names=tuple(ALL_PROFILES), default="balanced") -> results.RunDir:
    """A stored tune run (its recommended.json as `mateperf tune` writes it; the figures are
    given, not measured: this test is about the report's layout), of the profiles `names`."""
    run = results.RunDir.create("tune", {}, root=root, command="mateperf tune")
    profiles = {}
    for name in names:
        threads = ALL_PROFILES[name]
        settings = {
            "n_threads": threads,
            "n_threads_batch": 2,
            "n_batch": 128,
            "n_ubatch": 128,
            "n_gpu_layers": 0,
            "n_ctx": 2048,
            "type_k": "f16",
            "type_v": "f16",
            "flash_attn": False,
        }
        profiles[name] = {
            "settings": settings,
            "measured": {
                "reply_ms": 820.0,
                "ttft_ms": 95.0,
                "tg_tps": 44.0,
                "frame_p99_ms": 16.9,
                "vram_mb": None,
                "vram_basis": "no layers on the GPU",
            },
            "meets_frame_budget": True,
            "evidence": [
                {
                    "against": "companion",
                    "label": "companion's balanced",
                    "metric": metric,
                    "ratio_pick_over_other": ratio,
                    "ratio_ci95": [ratio - 0.05, ratio + 0.05],
                    "verdict": verdict,
                }
                for metric, ratio, verdict in (
                    ("reply_ms", 0.8, "faster"),
                    ("frame_p99_ms", 0.85, "lower"),
                )
            ],
        }
    rec = recommended_file.tuned(
        {
            "profiles": profiles,
            "default_profile": default,
            "frame_budget_ms": 17.667,
            "frame_p99_idle_ms": 16.7,
            "reply_tokens": 32,
            "vram_basis": "no card",
        },
        fp,
        run_id=run.run_id,
    )
    recommended_file.write(run.path / recommended_file.FILE_NAME, rec)
    run.write_text("tune.md", "# tune\n")
    run.finish(results.STATUS_OK)
    return run


@pytest.fixture(scope="module")
def final_text(tmp_path_factory):
    root = tmp_path_factory.mktemp("final") / "results"
    shutil.copytree(results.default_root(), root, ignore=shutil.ignore_patterns("explore"))
    fp = fingerprint()
    run = tune_run(root, fp)
    out = report.write_final(None, root)
    return out.read_text(encoding="utf-8"), root, run


def test_summary_first_then_the_companion_settings_then_the_rest(final_text):
    text, _root, run = final_text
    lines = text.splitlines()
    assert len(lines) <= LIMIT_LINES, len(lines)
    assert lines.index("## Summary") < FIRST_SCREEN
    assert lines[2].count("**host ") >= 3  # every host named in one line
    order = [
        lines.index("## Summary"),
        lines.index("## Settings for the companion"),
        lines.index("## What was measured, and where"),
        lines.index("## Hosts"),
    ]
    assert order == sorted(order)
    settings = text[text.index("## Settings for the companion") :]
    assert f"[`{run.run_id}`]({run.run_id}/tune.md)" in settings
    assert "reply ×0.80 [0.75, 0.85] faster" in settings
    assert "**Required in the companion**" in settings and "llama_kwargs" in settings


def test_a_tune_of_one_profile_is_read_by_the_settings_and_the_final_phase(tmp_path, capsys):
    """`mateperf tune -p profiles=performance` stores one profile: the companion's settings
    list it and name the two not tuned; the final phase, which wants balanced (the profile its
    baseline runs), says in one line that it takes performance instead."""
    from mateperf.model import resolve_model
    from mateperf.phases.final.measure import arm_configs
    from mateperf.phases.final.params import FinalParams
    from mateperf.reports import companion_settings

    fp = fingerprint()
    run = tune_run(tmp_path / "results", fp, names=("performance",), default="performance")
    path = run.path / recommended_file.FILE_NAME
    rec = recommended_file.load(path, fp)
    assert recommended_file.not_tuned(rec) == ["balanced", "cpu_fallback"]
    text = companion_settings.section(rec, run.run_id)
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "pick" not in ln]
    assert len(rows) == 1 and rows[0].startswith("| performance"), text
    assert "Tuned: performance. **Not tuned: balanced, cpu_fallback**" in text
    assert "`mateperf tune -p profiles=balanced,cpu_fallback`" in text

    with pytest.raises(recommended_file.ConfigError, match="no balanced profile: tune tuned "):
        recommended_file.as_params(rec, "balanced")
    capsys.readouterr()
    configs, facts = arm_configs(FinalParams(config=str(path)), resolve_model(None), usable=2)
    said = [ln for ln in capsys.readouterr().out.splitlines() if "no balanced" in ln]
    assert said == [
        "[final] the tuned file has no balanced profile (tune tuned performance): the tuned "
        "arms take performance instead"
    ]
    assert facts["profile"] == "tuned performance" and "no balanced" in facts["profile_reason"]
    assert configs["threads"].n_threads == ALL_PROFILES["performance"]


def test_every_phase_in_brief_links_its_full_report(final_text):
    text, _root, _run = final_text
    for phase in ("memory", "llm", "ipc", "cpu", "gpu", "final"):
        assert f"/{phase}.md) on host" in text  # "_In full: [...](<run>/<phase>.md) on host X"
    assert "### Every arm" in text and "### Recommendation" in text


def test_no_path_of_the_machine_that_ran_it(final_text):
    text, root, _run = final_text
    assert str(root) not in text and str(root.parent) not in text
    assert "/tmp/" not in text and "/work/" not in text and "/home/" not in text
    # the source of the tuned arms is named as a run of this results root, whatever run it is
    source = re.search(r"Threads of the tuned arms: (\S+)/recommended\.json\.", text)
    assert source, "no source named for the tuned arms"
    assert (root / source.group(1) / "recommended.json").is_file(), source.group(0)


def test_the_summary_stays_on_the_first_screen_with_more_hosts(final_text, tmp_path):
    """Four more hosts (runs copied with other fingerprints): still one line of hosts."""
    _text, root, _run = final_text
    more = tmp_path / "results"
    shutil.copytree(root, more)
    sources = [p for p in sorted(more.glob("*-memory-*")) if (p / "run.json").is_file()]
    for i in range(4):
        copy = more / f"{sources[0].name}-host{i}"
        shutil.copytree(sources[0], copy)
        info = json.loads((copy / "run.json").read_text(encoding="utf-8"))
        info["fingerprint"]["cpu_model"] = f"CPU model {i}"
        info["params"]["leak_kb_per_message"] = 100 + i  # another variant: the run is listed
        (copy / "run.json").write_text(json.dumps(info), encoding="utf-8")
    lines = report.write_final(None, more).read_text(encoding="utf-8").splitlines()
    assert lines[2].count("**host ") >= 7
    assert lines.index("## Summary") < FIRST_SCREEN


def test_the_regenerate_command_names_no_absolute_path(tmp_path):
    root = tmp_path / "results"
    elsewhere = tmp_path / "other" / "results-fixed1" / "20261206T223542Z-cpu-3d75"
    command = report._report_command([root / "run-a", elsewhere], root)
    assert command == "mateperf report results/run-a 20261206T223542Z-cpu-3d75"
    assert str(tmp_path) not in command
