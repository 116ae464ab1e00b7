"""--plot: a picture of the report (kept width per group, cost ratios, budget solves)."""
from __future__ import annotations

import json

import pytest
from test_cli import assert_clean_failure, conv_net, run_cli

pytest.importorskip("matplotlib")

from onnxprune import prune  # noqa: E402
from onnxprune.errors import OnnxPruneError  # noqa: E402
from onnxprune.report.plot import plot_report  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def test_cli_plot_writes_a_png_next_to_the_report(tmp_path):
    src, out = conv_net(tmp_path / "in.onnx"), tmp_path / "out.onnx"
    png, rep = tmp_path / "r.png", tmp_path / "r.json"
    r = run_cli(src, out, "--ratio", "0.5", "--no-latency", "--report", rep, "--plot", png, "-q")
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000
    assert json.loads(rep.read_text())["groups"]


def test_plot_from_a_budget_report_json(tmp_path):
    from test_compensate import conv1x1_model

    res = prune(conv1x1_model(), macs="60%", latency=False)
    assert res.report.budget["iterations"]
    rep = tmp_path / "r.json"
    res.report.write_json(str(rep))
    for target in ("b.svg", "b.pdf"):
        plot_report(str(rep), tmp_path / target)
        assert (tmp_path / target).stat().st_size > 1000
    assert (tmp_path / "b.svg").read_text().count('<g id="axes_') == 3  # groups, ratios, budget solves
    res.report.budget = None
    plot_report(res.report, tmp_path / "c.svg")
    assert (tmp_path / "c.svg").read_text().count('<g id="axes_') == 2


def test_bad_plot_paths_fail_before_any_work(tmp_path):
    src, out = conv_net(tmp_path / "in.onnx"), tmp_path / "out.onnx"
    r = run_cli(src, out, "--ratio", "0.5", "--no-latency", "--plot", tmp_path / "r.txt")
    assert_clean_failure(r, str(out))
    assert "give a .png, .svg or .pdf" in r.stderr
    r = run_cli(src, out, "--ratio", "0.5", "--no-latency", "--plot", src)
    assert_clean_failure(r, str(out))
    with pytest.raises(OnnxPruneError, match=".png, .svg or .pdf"):
        plot_report({"groups": []}, tmp_path / "x.jpg2")
