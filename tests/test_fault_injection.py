"""kill -9 at a random moment or inside a file write, rerun: the same result (benchmarks/fault_injection.py)."""
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_fault_injection_two_trials(tmp_path):
    # seed 0 draws one kill inside a file write and one at a random time (see the script's table)
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fault_injection.py"), "--trials", "2", "--seed", "0",
                        "--workdir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2/2 trials identical" in r.stdout and "outside the run unchanged" in r.stdout
    rows = [ln for ln in r.stdout.splitlines() if ln.strip()[:1].isdigit() and "|" in ln]
    assert len(rows) == 2 and all(ln.rstrip().endswith("yes") for ln in rows)
    assert any("in write" in ln for ln in rows) and any(" at " in ln for ln in rows)
