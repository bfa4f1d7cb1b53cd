"""Every bad input: exit code 2, one line naming the problem, no traceback, nothing run."""

import shutil

import pytest

from tests.conftest import small_llm_args


def assert_refused(result, *needles: str):
    assert result.rc == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def no_runs(results_root):
    return not results_root.exists() or not any(results_root.glob("*/run.json"))


@pytest.fixture()
def bad_models(tmp_path, default_model):
    d = tmp_path / "models"
    d.mkdir()
    (d / "empty.gguf").write_bytes(b"")
    (d / "notgguf.gguf").write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    blob = default_model.read_bytes()
    (d / "cut_header.gguf").write_bytes(blob[:4096])
    (d / "cut_data.gguf").write_bytes(blob[: len(blob) // 2])
    (d / "adir.gguf").mkdir()
    return d


@pytest.mark.parametrize(
    "name, needle",
    [
        ("missing.gguf", "does not exist"),
        ("adir.gguf", "is a directory"),
        ("empty.gguf", "is empty"),
        ("notgguf.gguf", "not a GGUF file"),
        ("cut_header.gguf", "truncated"),
        ("cut_data.gguf", "truncated"),
    ],
)
def test_bad_model_file_is_refused(cli, results_root, bad_models, name, needle):
    path = bad_models / name
    r = cli("run", "llm", "--model", str(path), *small_llm_args())
    assert_refused(r, str(path), needle)
    assert no_runs(results_root)


def test_bad_model_from_environment(cli, bad_models):
    r = cli("run", "llm", env={"MATEPERF_MODEL": str(bad_models / "empty.gguf")})
    assert_refused(r, "empty.gguf", "is empty")


@pytest.mark.parametrize(
    "args, needles",
    [
        (["run", "bogus"], ["unknown phase 'bogus'"]),
        (["run", "llm", "-p", "nope=1"], ["unknown parameter 'nope'"]),
        (["run", "llm", "-p", "trials=many"], ["trials='many'", "expected int"]),
        (["run", "llm", "-p", "flash_attn=maybe"], ["flash_attn", "expected bool"]),
        (["run", "llm", "-p", "trials=0"], ["trials=0"]),
        (["run", "llm", "-p", "n_ctx=-5"], ["n_ctx=-5"]),
        (["run", "llm", "-p", "n_threads=-3"], ["n_threads=-3"]),
        (["run", "llm", "-p", "n_gpu_layers=-7"], ["n_gpu_layers=-7"]),
        (["run", "llm", "-p", "trials"], ["expected key=value"]),
        (["run", "ipc", "-p", "pin_cpu=99"], ["pin_cpu=99"]),
        (["run", "ipc", "-p", "peer=unity"], ["peer='unity'"]),
        (["frobnicate"], ["invalid choice"]),
        (["report", "/nonexistent/run"], ["not a run directory"]),
        (["sweep", "llm", "--resume", "nonexistent/sweep"], ["not a run directory"]),
        (["sweep", "llm", "--grid", "n_threads=1,2", "--rounds", "x"], ["--rounds", "'x'"]),
    ],
)
def test_bad_cli_input_is_refused(cli, results_root, args, needles):
    assert_refused(cli(*args), *needles)
    assert no_runs(results_root)


def test_report_with_no_runs_is_refused(cli):
    assert_refused(cli("report"), "no finished runs")


def test_info_json(cli):
    import json

    r = cli("info", "--json")
    assert r.rc == 0, r.stderr
    fp = json.loads(r.stdout)
    assert fp["cores_logical"] >= 1
    assert "AVX" in fp["llama_cpp"]["system_info"]
    if not shutil.which("nvidia-smi"):
        assert fp["gpus"]["count"] == 0 and fp["gpus"]["reason"]


@pytest.mark.parametrize("phase", ["memory", "llm"])
def test_every_model_phase_checks_the_model_file_first(cli, results_root, bad_models, phase):
    path = bad_models / "notgguf.gguf"
    assert_refused(cli("run", phase, "--model", str(path)), str(path), "not a GGUF file")
    assert no_runs(results_root)
