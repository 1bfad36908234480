"""`python -m bench run` without the bench extra: the results JSON is written and it says how to get the chart."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import PYTHON, REPO_ROOT, TIMEOUT_SCALE, python_env

# matplotlib made unimportable, and the suite replaced by one that reports a result at once:
# what is under test is what `python -m bench run` does with the results, not the measuring.
WITHOUT_MATPLOTLIB = """
import sys
sys.modules["matplotlib"] = None
from bench import suite

def run(*args, on_progress, **kwargs):
    results = {"schema": 1, "suite": "cpu", "plan": {"canvas_length": 16}, "dtypes": {"fp32": {"measured": True}}}
    on_progress(results)
    return results

suite.run = run
from bench.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_bench_run_without_matplotlib_writes_its_json_and_says_how_to_get_the_chart(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [PYTHON, "-c", WITHOUT_MATPLOTLIB, "run", "--suite", "cpu", "--out", str(out)],
        cwd=str(REPO_ROOT),
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=300 * TIMEOUT_SCALE,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["complete"] is True and results["dtypes"] == {"fp32": {"measured": True}}
    assert not out.with_suffix(".png").exists()
    assert 'pip install ".[bench]"' in proc.stderr.splitlines()[-1]
