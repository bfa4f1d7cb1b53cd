"""llama.cpp's projection through common_fit_print, in a child process, on the real library."""

import os
from pathlib import Path

import pytest

from mateperf.gpu import projection

pytestmark = pytest.mark.slow


def offload() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def test_known_answer_on_the_cpu_build(default_model):
    """The figure the issue recorded on this kind of host: `Host 222 36 514` at n_ctx 2048."""
    if offload():
        pytest.skip("a CUDA build projects device buffers; the known answer is the CPU build's")
    configs = [projection.dry_run_config(k, 2048, 512, 512) for k in (0, -1)]
    results, facts = projection.project(default_model, configs)
    assert facts["status"] == projection.OK and facts["gpu_offload"] is False
    assert Path(facts["library"]).name == projection.LIBRARY
    for r in results:
        assert r["status"] == projection.OK
        assert r["devices"] == {"Host": [222, 36, 514]}
        assert (r["proj_host_model_mb"], r["proj_host_context_mb"]) == (222.0, 36.0)
        assert r["proj_device_mb"] == 0


def test_missing_symbol_means_unavailable_with_this_build(default_model, monkeypatch):
    """A real library without common_fit_print (ggml's) stands for a build that lacks it."""
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib" / "libggml.so"
    monkeypatch.setenv(projection.LIBRARY_ENV, str(lib))
    results, facts = projection.project(
        default_model, [projection.dry_run_config(0, 512, 512, 512)]
    )
    assert facts["status"].startswith(f"{projection.UNAVAILABLE} (llama-cpp-python ")
    assert "common_fit_print" in facts["status"]
    assert results[0]["status"] == facts["status"]
    assert results[0]["proj_host_mb"] != results[0]["proj_host_mb"]  # NaN, not a number


def test_an_abort_costs_one_config_not_the_caller(tmp_path):
    """n_batch 0 makes llama.cpp throw inside common_fit_print: the C++ exception aborts the
    child (SIGABRT); the caller records why and runs the next config in a new child."""
    from mateperf.gpu.tinygguf import write_tiny_gguf

    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    good = projection.dry_run_config(0, 512, 512, 512)
    bad = {**good, "n_batch": 0, "n_ubatch": 0}
    results, facts = projection.project(path, [good, bad, good])
    assert facts["status"] == projection.OK
    assert [r["status"] for r in results][::2] == [projection.OK, projection.OK]
    assert "killed by SIGABRT" in results[1]["status"]
    assert "failed to create llama_context" in results[1]["status"]
    assert results[0]["devices"] == results[2]["devices"]
    assert os.getpid() > 0  # still here
