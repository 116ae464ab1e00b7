"""`onnxprune profile` builds the latency model a `--budget` uses (the op-level model unless
`--latency-model table` or a `--latency-cmd` says otherwise), so that a pipeline can warm the cache
before it prunes; `--check K` measures K held-out width assignments. Real CLI runs on a small conv net."""
from __future__ import annotations

import json

from test_cli import conv_net, run_cli
from test_cli_behaviour import FAKE_TIMER, one_error_line


def test_profile_builds_the_op_model_a_budget_reads_and_honours_rebuild_and_no_cache(tmp_path):
    src, cache = conv_net(tmp_path / "in.onnx"), tmp_path / "cache"
    r = run_cli("profile", src, "--cache-dir", cache, "-q")
    assert r.returncode == 0, r.stderr
    assert "op-level latency model for 1 groups (built in" in r.stdout, r.stdout
    assert "predicted ms with the group alone at 75% / 50% / 25%" in r.stdout
    files = list(cache.glob("*.json"))
    assert len(files) == 1
    stored = files[0].read_text()
    r = run_cli("profile", src, "--cache-dir", cache, "-q")
    assert r.returncode == 0 and "(from cache)" in r.stdout, r.stdout
    r = run_cli("profile", src, "--cache-dir", cache, "--no-cache", "-q")
    assert r.returncode == 0 and "(built in" in r.stdout and files[0].read_text() == stored
    r = run_cli("profile", src, "--cache-dir", cache, "--rebuild", "-q")
    assert r.returncode == 0 and "(built in" in r.stdout
    assert list(cache.glob("*.json")) == files and files[0].read_text() != stored
    # the budget uses the model profile stored (same cache key; the tiny net cannot meet the budget,
    # which it finds with that model): nothing new in the cache, while a fresh cache gets that file
    budget = ["--budget", "0.9x", "--no-verify", "-q"]
    run_cli(src, tmp_path / "out.onnx", *budget, "--cache-dir", cache)
    assert list(cache.glob("*.json")) == files
    fresh = tmp_path / "fresh"
    run_cli(src, tmp_path / "out.onnx", *budget, "--cache-dir", fresh)
    assert [p.name for p in fresh.glob("*.json")] == [files[0].name]

def test_profile_json_holds_the_model(tmp_path):
    src, cache, js = conv_net(tmp_path / "in.onnx"), tmp_path / "cache", tmp_path / "model.json"
    r = run_cli("profile", src, "--cache-dir", cache, "--json", js, "-q")
    assert r.returncode == 0, r.stderr
    d = json.loads(js.read_text())
    assert d["nodes"] and d["group_ids"] == [0] and d["baseline_ms"] > 0 and "run" in d


def test_profile_check_prints_predicted_next_to_measured(tmp_path):
    src, cache = conv_net(tmp_path / "in.onnx"), tmp_path / "cache"
    r = run_cli("profile", src, "--cache-dir", cache, "--check", "2", "-q")
    assert r.returncode == 0, r.stderr
    rows = [l.split() for l in r.stdout.splitlines() if l.strip()[:1].isdigit()]
    assert len(rows) == 2 and all(float(x[1]) > 0 and float(x[2]) > 0 for x in rows), r.stdout
    assert "median_abs_rel_error" in r.stdout


def test_profile_table_and_op_model_choices(tmp_path):
    src, cache = conv_net(tmp_path / "in.onnx"), tmp_path / "cache"
    r = run_cli("profile", src, "--latency-model", "table", "--latency-cmd", FAKE_TIMER, "--cache-dir", cache, "-q")
    assert r.returncode == 0 and "latency table for 1 groups" in r.stdout, r.stderr
    r = run_cli("profile", src, "--latency-model", "op", "--latency-cmd", FAKE_TIMER, "--cache-dir", cache)
    assert r.returncode == 2 and "--latency-model op profiles nodes in ONNX Runtime" in one_error_line(r)
    r = run_cli("profile", src, "--latency-model", "table", "--check", "2", "--cache-dir", cache)
    assert r.returncode == 2 and "--check measures the op-level latency model" in one_error_line(r)
