"""The device check script, checked where it cannot run (no GPU here): it parses, fits one
device call under 6 minutes, and its runner uses the phase's own parameters."""

import re
import subprocess
import sys
from pathlib import Path

from mateperf import phases

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_device_check.sh"


def test_the_check_script_parses():
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_check_fits_one_call_under_6_minutes():
    text = SCRIPT.read_text(encoding="utf-8")
    budget = int(re.search(r'BUDGET_S="\$\{BUDGET_S:-(\d+)\}"', text).group(1))
    assert budget <= 330  # leaves the machine's start and the transfers inside 360 s
    # every timeout comes out of the budget (`left`), none is fixed beyond it
    fixed = [int(t) for t in re.findall(r"timeout (\d+) ", text)]
    assert sum(fixed) < budget / 2, fixed
    assert 'run(command="bash benchmarks/gpu_device_check.sh", carry=[".gpu"]' in text


def test_the_runner_uses_the_phase_parameters():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_device_run
    finally:
        sys.path.pop(0)
    notebook = {k: v for k, v in phases.parameters("gpu").items() if k != phases.RUN_DIR_PARAM}
    assert gpu_device_run.defaults() == notebook
    assert notebook["trials"] >= 4  # what a rank test needs to reach a verdict
