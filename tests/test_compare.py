"""Known-answer checks of the comparison machinery: A/A at the nominal rate, a 20% shift found.

Simulated runs have the structure real ones have: trials that differ from each other (a
trial-level effect: which vCPU a thread landed on, the host's state) and many requests per
trial. Seeds are fixed, so each check is deterministic.
"""

import numpy as np
import pandas as pd
import pytest

from mateperf import compare, metrics, stats
from mateperf.reports.compare import format_comparison

TRIALS, REQUESTS = 5, 100


def simulated_ipc_run(rng, trials=TRIALS, scale=1.0, trial_sd=0.05, request_sd=0.2):
    """Request rows of an ipc-like run: rtt = 100 µs × scale × trial effect × request noise."""
    rows = []
    for trial in range(trials):
        effect = rng.lognormal(0.0, trial_sd)
        rtt = 100.0 * scale * effect * rng.lognormal(0.0, request_sd, REQUESTS)
        warm = np.arange(REQUESTS) < 5
        rows.append(
            pd.DataFrame(
                {
                    "scenario": "simple_commands",
                    "mode": "bridge_unpaced",
                    "fps": 0.0,
                    "target_bytes": np.nan,
                    "batch_size": np.nan,
                    "trial": trial,
                    "is_warmup": warm,
                    "rtt_us": rtt,
                    # not metrics: a timestamp and incidental bytes
                    "since_start_ms": np.arange(REQUESTS) * 0.1,
                    "size_bytes": 90 + (np.arange(REQUESTS) >= 10),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def test_aa_pairs_are_called_different_at_about_the_nominal_rate():
    rng = np.random.default_rng(20261127)
    pairs = 300
    different = tested = pooled_different = 0
    for _ in range(pairs):
        a, b = simulated_ipc_run(rng), simulated_ipc_run(rng)
        table = compare.compare_frames("ipc", a, b, set())
        d, t, _ = compare.called_different(table)
        different, tested = different + d, tested + t
        # what pooling requests as independent samples would have said
        pooled = stats.compare(a["rtt_us"], b["rtt_us"])
        pooled_different += pooled.verdict != stats.NO_DIFFERENCE
    rate = different / tested
    # Mann–Whitney with 5 trials per arm rejects at most 3.2% of A/A pairs at the 5% level
    assert 0.005 <= rate <= 0.07, rate
    # the detector is not vacuous: the pooled (wrong) test is fooled by trial effects
    assert pooled_different / pairs > 0.3


def test_a_20_percent_shift_is_detected_with_its_direction():
    rng = np.random.default_rng(7)
    found = 0
    for _ in range(50):
        a, b = simulated_ipc_run(rng), simulated_ipc_run(rng, scale=1.2)
        table = compare.compare_frames("ipc", a, b, set())
        median = table[table["statistic"] == "trial median"].iloc[0]
        found += median["verdict"] == "slower"
        assert median["verdict"] != "faster"
    assert found >= 45
    assert median["n"] == f"{TRIALS}/{TRIALS}"  # trials, not requests


def test_throughput_shift_reads_faster():
    rng = np.random.default_rng(3)
    a = pd.DataFrame({"scenario": "tg", "arm": np.nan, "trial": range(5)})
    b = a.copy()
    a["tg_tps"] = 40 * rng.lognormal(0, 0.02, 5)
    b["tg_tps"] = 50 * rng.lognormal(0, 0.02, 5)
    table = compare.compare_frames("llm", a, b, set())
    row = table[table["metric"] == "tg_tps"].iloc[0]
    assert row["verdict"] == "faster" and row["statistic"] == "per trial"


def test_only_declared_metrics_and_no_warmups_are_compared():
    rng = np.random.default_rng(1)
    a, b = simulated_ipc_run(rng), simulated_ipc_run(rng)
    table = compare.compare_frames("ipc", a, b, set())
    assert set(table["metric"]) == {"rtt_us"}  # since_start_ms, size_bytes are not metrics
    assert list(table["statistic"]) == ["trial median", "trial p95", "trial p99"]
    # warm-up rows are left out before the per-trial statistics
    a.loc[a["is_warmup"], "rtt_us"] = 1e9
    again = compare.compare_frames("ipc", a, b, set())
    pd.testing.assert_frame_equal(table, again)


def test_per_trial_values_copied_onto_request_rows_count_once_per_trial():
    # the layout of older stored ipc runs: a trial's total copied onto each of its requests
    df = pd.DataFrame(
        {"trial": np.repeat(range(4), 50), "total_ms": np.repeat([10, 11, 12, 13], 50)}
    )
    values = compare.trial_values(df, metrics.get("ipc", "total_ms"))
    assert list(values) == [10, 11, 12, 13]


def test_rows_are_matched_on_the_asked_size_not_on_bytes():
    rng = np.random.default_rng(5)
    a, b = simulated_ipc_run(rng), simulated_ipc_run(rng)
    a["target_bytes"] = 1024.0
    b["target_bytes"] = 1024.0
    b["size_bytes"] += 1  # a longer request id: still the same test
    table = compare.compare_frames("ipc", a, b, set())
    assert len(table) == 3 and set(table["target_bytes"]) == {1024.0}


def test_one_replicate_per_arm_is_not_tested():
    a = pd.DataFrame({"scenario": "first_reply", "arm": "cold", "trial": [0], "ttft_ms": [50.0]})
    b = a.assign(ttft_ms=[80.0])
    row = compare.compare_frames("llm", a, b, set()).iloc[0]
    assert row["verdict"] == stats.NOT_TESTED
    assert compare.called_different(compare.compare_frames("llm", a, b, set())) == (0, 0, 1)


@pytest.mark.parametrize("stat,q", [("median", 50), ("p95", 95), ("p99", 99)])
def test_trial_statistics_are_per_trial_percentiles(stat, q):
    rng = np.random.default_rng(9)
    df = simulated_ipc_run(rng)
    expected = [np.percentile(g["rtt_us"], q) for _, g in df.groupby("trial")]
    values = compare.trial_values(df, metrics.get("ipc", "rtt_us"), stat)
    assert np.allclose(values, expected)


def test_three_trials_a_side_are_too_few_to_test():
    a = pd.DataFrame({"scenario": "first_reply", "arm": "cold", "trial": range(3)})
    b = a.copy()
    a["ttft_ms"], b["ttft_ms"] = [50.0, 51.0, 52.0], [80.0, 81.0, 82.0]
    table = compare.compare_frames("llm", a, b, set())
    row = table[table["metric"] == "ttft_ms"].iloc[0]
    assert row["verdict"] == "too few trials to test: 3+3, a rank test needs 4+4"
    assert compare.called_different(table) == (0, 0, 1)
    text = format_comparison(table, "a", "b")
    assert "1 not tested: too few trials" in text and "needs 4+4" in text
    # a fourth trial a side, still completely separated: tested and called
    a4 = pd.concat([a, a.iloc[[0]].assign(trial=3, ttft_ms=53.0)], ignore_index=True)
    b4 = pd.concat([b, b.iloc[[0]].assign(trial=3, ttft_ms=83.0)], ignore_index=True)
    row4 = compare.compare_frames("llm", a4, b4, set()).iloc[0]
    assert row4["verdict"] == "slower"
