"""Every benchmark script answers `--help` (issue #14): exit 0, a usage line, and none of the heavy
libraries imported on the way (onnx, onnxruntime, torch, the pruning pipeline), so the help is
instant and works without torch. Scripts without a `__main__` block are helper modules, not
commands."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if "__main__" in p.read_text())
HEAVY = ("onnx", "onnxruntime", "torch", "onnxprune.api", "onnxprune.commands")

# Runs the script as `python SCRIPT --help` would (its folder first on sys.path), then reports
# the exit code and which heavy modules got imported.
PROBE = """
import json, runpy, sys
path, heavy = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, path.rsplit('/', 1)[0])
sys.argv = [path, '--help']
code = 0
try:
    runpy.run_path(path, run_name='__main__')
except SystemExit as e:
    code = e.code or 0
print(json.dumps(dict(code=code, heavy=[m for m in heavy if m in sys.modules])), file=sys.stderr)
"""


def test_there_are_scripts():
    assert {"sweep.py", "retention.py", "latency_budget.py", "oracle_tolerance.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_help_exits_0_with_usage(script):
    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                       cwd="/")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.lstrip().startswith("usage:"), r.stdout[:500]


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_help_imports_nothing_heavy(script):
    r = subprocess.run([sys.executable, "-c", PROBE, str(script), json.dumps(HEAVY)], capture_output=True,
                       text=True, timeout=120, cwd="/")
    probe = json.loads(r.stderr.strip().splitlines()[-1])
    assert probe == dict(code=0, heavy=[]), f"{script.name} --help: {probe}"
