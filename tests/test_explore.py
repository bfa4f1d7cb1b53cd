"""The explore helpers on the runs committed under results/: defaults that do not mislead."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from mateperf import explore, metrics, results  # noqa: E402

LLM_RUN = "20261130T214950Z-llm-fe7b"  # one host
LLM_SWEEP = "20261126T192211Z-llm-sweep-06b8"  # another host (its CPU differs), n_threads 1, 2


@pytest.fixture(scope="module")
def llm():
    root = results.default_root()
    return explore.load([root / LLM_RUN, root / LLM_SWEEP], "llm")


def test_ttft_by_default_shows_cold_and_warm_apart(llm):
    assert explore.default_hue(llm, "ttft_ms") == "arm"
    fig = explore.plot_metric(llm, "ttft_ms")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cold", "warm"]
    cold, warm = (p.get_height() for p in ax.patches)
    assert cold > 2 * warm  # the cold first reply is not averaged with the warm one


def test_one_host_per_plot_unless_asked(llm):
    hosts = sorted(llm["host"].unique())
    assert len(hosts) == 2
    ax = explore.plot_metric(llm, "tg_tps", by="n_threads").axes[0]
    assert "1 other host(s) not shown" in ax.get_title()
    assert explore.newest_host(llm) in ax.get_title()
    ax = explore.plot_metric(llm, "tg_tps", by="n_threads", host="all").axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {h for h in hosts if any(h in label for label in labels)} == set(hosts)


def test_special_values_say_what_they_mean(llm):
    # the run left n_threads at 0 (llama.cpp's default: it ran 2), the sweep set 1 and 2
    ax = explore.plot_metric(llm, "tg_tps", by="n_threads", hue=None, host="all").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["auto (2)", "1", "2"]


def test_the_dropdowns_offer_the_declared_factors_only(llm):
    found = explore.factors(llm)
    assert set(found) <= set(metrics.FACTORS["llm"])
    assert {"arm", "scenario", "run_id", "host", "n_threads"} <= set(found)
    assert not {"error", "reply_text", "model_file", "seed"} & set(found)


def test_tune_runs_are_declared_and_plottable(tmp_path):
    import pandas as pd

    assert metrics.get("tune", "reply_ms") and metrics.get("tune", "frame_p99_ms")
    df = pd.DataFrame(
        {
            "run_id": "r",
            "phase": "tune",
            "profile": ["balanced"] * 4 + ["cpu_fallback"] * 4,
            "stage": "race",
            "n_threads": [1, 1, 2, 2] * 2,
            "trial": [0, 1] * 4,
            "reply_ms": [800.0, 810, 700, 705, 900, 905, 850, 860],
            "frame_p99_ms": [16.8, 16.9, 21.0, 21.2] * 2,
        }
    )
    assert explore.declared(df) == ["reply_ms", "frame_p99_ms"]
    assert explore.default_hue(df, "reply_ms", by="n_threads") == "profile"
    assert len(explore.plot_metric(df, "reply_ms", by="n_threads").axes[0].patches) == 4
