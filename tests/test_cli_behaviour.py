"""Issue #14 items 7-17: the command line behaves like a well-kept tool. Each test runs the real CLI
(a subprocess, or main() in process where a failure must be planted) and asserts the outcome: exit
code, the one line on stderr, which files exist."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli import assert_clean_failure, conv_net, run_cli

ROOT = Path(__file__).resolve().parents[1]
FAKE_TIMER = "echo latency_ms: 1 # {model}"  # a --latency-cmd that answers at once


def one_error_line(r) -> str:
    lines = [l for l in r.stderr.splitlines() if l.startswith("onnxprune:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def garbage(tmp_path) -> Path:
    """A file that is no model: an error about the arguments must come before anything reads it."""
    p = tmp_path / "garbage.onnx"
    p.write_text("not a model\n")
    return p


def two_input_net(path) -> Path:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "w2")
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("MatMul", ["s", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 64]) for n in "ab"],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [w1, w2])
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


# ---------------------------------------------------------------- item 7: outputs checked first, all or nothing
def test_unwritable_output_path_is_refused_before_any_work(tmp_path):
    r = run_cli("prune", garbage(tmp_path), "/proc/x.onnx", "--ratio", "0.3")
    line = one_error_line(r)
    assert r.returncode == 2 and "output path" in line and "/proc" in line and ".tmp" not in line


@pytest.mark.parametrize("flag, path", [("--report", "/proc/r.json"), ("--plot", "/proc/r.png")])
def test_unwritable_side_output_leaves_no_model(tmp_path, flag, path):
    if flag == "--plot":
        pytest.importorskip("matplotlib")
    src, out = conv_net(tmp_path / "in.onnx"), tmp_path / "out.onnx"
    r = run_cli("prune", src, out, "--ratio", "0.5", "--no-latency", flag, path)
    assert r.returncode == 2 and flag in one_error_line(r)
    assert_clean_failure(r, str(out))


def test_a_failing_side_output_takes_the_model_with_it(tmp_path, monkeypatch, capsys):
    """The plot fails after the model and the report were written: none of the three stays."""
    import onnxprune.commands as commands
    from onnxprune.cli import main

    def broken_plot(report, path):
        Path(path).write_text("half a picture")
        raise RuntimeError("disk full")

    monkeypatch.setattr(commands, "plot_report", broken_plot)
    monkeypatch.setattr(commands, "check_plot_path", lambda path: None)
    src, out, rep = conv_net(tmp_path / "in.onnx"), tmp_path / "out.onnx", tmp_path / "r.json"
    assert main([str(src), str(out), "--ratio", "0.5", "--no-latency", "-q", "--report", str(rep),
                 "--plot", str(tmp_path / "p.png")]) == 1
    assert "disk full" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["in.onnx"]


# ---------------------------------------------------------------- item 8: a closed pipe loses no file
def test_analyze_json_is_written_when_stdout_is_closed_early(tmp_path):
    src, out = conv_net(tmp_path / "in.onnx"), tmp_path / "a.json"
    p = subprocess.Popen([sys.executable, "-m", "onnxprune", "analyze", str(src), "--no-latency", "--json", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    p.stdout.close()  # the reader is gone before the first line, as with `| head -0`
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert json.loads(out.read_text())["groups"]


# ---------------------------------------------------------------- item 9: a typo'd verb is not an input file
def test_typo_in_the_command_suggests_the_verb(tmp_path):
    src = conv_net(tmp_path / "in.onnx")
    r = run_cli("analyse", src)
    assert r.returncode == 2 and "did you mean 'analyze'" in one_error_line(r)
    r = run_cli("prnue", src, tmp_path / "out.onnx", "--ratio", "0.3")
    assert r.returncode == 2 and "did you mean 'prune'" in one_error_line(r)
    assert not (tmp_path / "out.onnx").exists()


# ---------------------------------------------------------------- item 10: --input-shape forms, errors first
def test_input_shape_accepts_comma_separated_and_repeated_forms(tmp_path):
    src = two_input_net(tmp_path / "in.onnx")
    for shape_args in (["--input-shape", "a=2x64,b=2x64"], ["--input-shape", "a=2x64", "--input-shape", "b=2x64"]):
        rep = tmp_path / "r.json"
        r = run_cli(src, tmp_path / "out.onnx", "--ratio", "0.5", "--no-latency", "-q", "--report", rep, *shape_args)
        assert r.returncode == 0, r.stderr
        assert json.loads(rep.read_text())["settings"]["input_shapes"] == {"a": [2, 64], "b": [2, 64]}


@pytest.mark.parametrize("cmd, args, says", [
    ("prune", ["--ratio", "0.3", "--calib", "missing.npz", "--scorer", "vbp"], "calibration data not found"),
    ("prune", ["--ratio", "0.3", "--input-shape", "x=1xab"], "--input-shape"),
    ("prune", ["--ratio", "0.3", "--compensate", "lstsq"], "needs calibration data"),
    ("analyze", ["--input-shape", "x=1xab"], "--input-shape"),
    ("analyze", ["--batch", "0"], "batch"),
    ("profile", ["--threads", "0"], "threads"),
])
def test_argument_errors_come_before_the_model_is_read(tmp_path, cmd, args, says):
    bad_model = garbage(tmp_path)
    out = [tmp_path / "out.onnx"] if cmd == "prune" else []
    r = run_cli(cmd, bad_model, *out, *args)
    line = one_error_line(r)
    assert r.returncode == 2 and says in line  # the argument, not the unreadable model, is named


# ---------------------------------------------------------------- item 11: units
def test_peak_memory_takes_a_bare_number_of_bytes_and_is_named_as_the_flag(tmp_path):
    src, out, rep = conv_net(tmp_path / "in.onnx"), tmp_path / "out.onnx", tmp_path / "r.json"
    r = run_cli(src, out, "--peak-memory", "2500", "--no-latency", "-q", "--report", rep)
    assert r.returncode == 0, r.stderr
    budget = json.loads(rep.read_text())["budget"]
    assert budget["metric"] == "peak_memory" and budget["budget"] == 2500 and budget["measured"] <= 2500
    r = run_cli(src, out, "--peak-memory", "12parsecs")
    line = one_error_line(r)
    assert r.returncode == 2 and "--peak-memory" in line and "peak_memory" not in line


def test_one_quantity_is_written_in_one_unit():
    from onnxprune.report.records import ModelStats, RunSettings
    from onnxprune.report.summary import Report

    settings = RunSettings(ratio=0.3, ratio_dw=None, global_rank=False, round_to=None, scorer="l2", exclude=[],
                           heads=False, embed_dim=False, input_shapes={}, provider="cpu", threads=None)
    rep = Report("in", "out", settings, ModelStats(macs=1_200_000, params=398_590, file_bytes=1_610_000,
                                                    peak_memory_bytes=98_300),
                 pruned=ModelStats(macs=900_000, params=196_820, file_bytes=805_580, peak_memory_bytes=81_920))
    rows = {line.split()[0]: line for line in rep.summary().splitlines()}
    assert "1.61 MB" in rows["file"] and "0.81 MB" in rows["file"] and "KB" not in rows["file"]
    assert "1.20M" in rows["MACs"] and "0.90M" in rows["MACs"]
    assert rows["peak"].count("KB") == 2


# ---------------------------------------------------------------- item 12: --no-cache means one thing
def test_no_cache_neither_reads_nor_stores_and_profile_has_no_no_latency(tmp_path):
    src, cache = conv_net(tmp_path / "in.onnx"), tmp_path / "cache"
    base = ["profile", src, "--latency-cmd", FAKE_TIMER, "--cache-dir", cache, "-q"]
    r = run_cli(*base, "--no-cache")
    assert r.returncode == 0, r.stderr
    assert not cache.exists() or not list(cache.iterdir())
    r = run_cli(*base)
    assert r.returncode == 0 and len(list(cache.glob("*.json"))) == 1, r.stderr
    r = run_cli(*base, "--no-cache")
    assert r.returncode == 0 and "measured in" in r.stdout  # not read from the cache either
    r = run_cli(*base, "--rebuild")
    assert r.returncode == 0 and "measured in" in r.stdout and len(list(cache.glob("*.json"))) == 1
    r = run_cli("profile", src, "--no-latency")
    assert r.returncode == 2 and "--no-latency" in r.stderr


# ---------------------------------------------------------------- item 13: flags that would do nothing
def test_heads_on_a_cnn_is_said_to_change_nothing(tmp_path):
    src = conv_net(tmp_path / "in.onnx")
    r = run_cli(src, tmp_path / "out.onnx", "--ratio", "0.5", "--heads", "--no-latency", "-q")
    assert r.returncode == 0 and "--heads found no attention heads" in r.stdout, r.stderr
    r = run_cli("analyze", src, "--heads", "--no-latency", "-q")
    assert r.returncode == 0 and "--heads found no attention heads" in r.stdout
    r = run_cli(src, tmp_path / "out.onnx", "--ratio", "0.5", "--no-latency", "-q")
    assert "--heads" not in r.stdout


def test_calibration_that_nothing_reads_or_that_fits_no_input(tmp_path):
    src, out = conv_net(tmp_path / "in.onnx"), tmp_path / "out.onnx"
    x = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "named.npz", pixels=x)
    np.savez(tmp_path / "ints.npz", x=np.arange(16 * 3 * 64).reshape(16, 3, 8, 8))
    r = run_cli(src, out, "--ratio", "0.5", "--calib", tmp_path / "named.npz", "--no-latency")
    assert r.returncode == 2 and "would be ignored" in one_error_line(r) and not out.exists()
    r = run_cli(src, out, "--ratio", "0.5", "--scorer", "vbp", "--calib", tmp_path / "ints.npz", "--no-latency")
    assert r.returncode == 2 and "int64" in one_error_line(r) and not out.exists()
    r = run_cli(src, out, "--ratio", "0.5", "--scorer", "vbp", "--calib", tmp_path / "named.npz", "--no-latency", "-q")
    assert r.returncode == 0, r.stderr
    assert "'pixels' is named like no model input" in r.stdout


# ---------------------------------------------------------------- item 14: parse before the heavy imports
def test_the_command_line_parses_without_onnx_onnxruntime_or_numpy():
    code = ("import sys\nfrom onnxprune.cli import main\n"
            "for argv in (['--help'], ['--version'], ['prune', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'numpy', 'onnx_graphsurgeon') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    r = subprocess.run([sys.executable, "-c", "import onnxprune, sys; onnxprune.prune; print('onnx' in sys.modules)"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip() == "True"  # the lazy facade still gives the API


def test_the_cli_lists_the_registered_scorers():
    from onnxprune.cli import SCORER_NAMES
    from onnxprune.scoring.registry import SCORERS

    assert tuple(sorted(SCORERS)) == SCORER_NAMES


# ---------------------------------------------------------------- item 15: progress in logs, red ratios
def test_progress_prints_plain_lines_when_not_a_terminal():
    from onnxprune.report.progress import Progress

    stream = io.StringIO()  # no isatty: a log file
    p = Progress(stream=stream, log_every_s=0.0)
    p.start("profile", "(3 groups)")
    for i in range(3):
        p.update(i, 3)
    p.done()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "  profile (3 groups) ..." and "\r" not in stream.getvalue()
    assert [l.split()[2] for l in lines[1:3]] == ["1/3", "2/3"] and lines[-1].startswith("  profile done")


def test_a_ratio_above_one_is_drawn_in_the_warning_colour():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from onnxprune.report.plot import RATIO_BETTER, RATIO_WORSE, ratios_panel

    fig, ax = plt.subplots()
    ratios_panel(ax, {"macs": 100, "latency_ms": 1.0}, {"macs": 50, "latency_ms": 1.3})
    colours = [to_hex(bar.get_facecolor()) for bar in ax.patches]
    plt.close(fig)
    assert colours == [RATIO_BETTER, RATIO_WORSE]


# ---------------------------------------------------------------- item 16: reproducible reports
def test_report_records_versions_time_and_command_line(tmp_path):
    src, out, rep = conv_net(tmp_path / "in.onnx"), tmp_path / "out.onnx", tmp_path / "r.json"
    args = [str(src), str(out), "--ratio", "0.5", "--no-latency", "-q", "--report", str(rep)]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    run = json.loads(rep.read_text())["run"]
    import onnxruntime

    from onnxprune import __version__
    assert run["onnxprune"] == __version__
    assert run["versions"]["onnx"] == onnx.__version__ and run["versions"]["onnxruntime"] == onnxruntime.__version__
    assert run["versions"]["numpy"] == np.__version__ and run["versions"]["python"] == sys.version.split()[0]
    assert datetime.fromisoformat(run["timestamp_utc"]).utcoffset().total_seconds() == 0
    assert run["command"] == ["onnxprune"] + args


# ---------------------------------------------------------------- item 17: CI installs only what tests need
def test_ci_script_does_not_upgrade_pip_and_runs_the_readme_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [l for l in ci.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    assert not any("--upgrade" in c or " -U " in c for c in commands)
    assert any('pip install -q -e ".[test]"' in c for c in commands)
    assert any("pytest" in c and "tests" in c for c in commands)
