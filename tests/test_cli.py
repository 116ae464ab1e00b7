"""Bad input must give one clear line, a non-zero exit and nothing at the output path; the input is
never modified. Uses small models built with onnx.helper so no fixtures are needed."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def conv_net(path, custom=False, external=False):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["a"], ["b"], name="relu")]
    if custom:
        nodes.append(helper.make_node("Mystery", ["b"], ["c"], domain="com.example", name="mystery"))
        nodes.append(helper.make_node("Conv", ["c", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2"))
    else:
        nodes.append(helper.make_node("Conv", ["b", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.example", 1)] if custom else [])
    m = helper.make_model(g, opset_imports=opsets)
    if external:
        onnx.save_model(m, str(path), save_as_external_data=True, location=os.path.basename(path) + ".data",
                        size_threshold=0)
    else:
        onnx.save_model(m, str(path))
    return path


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxprune.cli", *map(str, args)], capture_output=True, text=True)


def assert_clean_failure(r, out):
    assert r.returncode != 0
    err = [l for l in r.stderr.splitlines() if l.startswith("onnxprune:")]
    assert len(err) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(out)
    assert not [f for f in os.listdir(os.path.dirname(out)) if f.startswith("." + os.path.basename(out))]


def test_prune_writes_verified_model_without_prune_word(tmp_path):
    src = conv_net(tmp_path / "in.onnx")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "out.onnx"
    r = run_cli(src, out, "--ratio", "0.5", "--no-latency", "--report", tmp_path / "r.json", "-q")
    assert r.returncode == 0, r.stderr
    assert "verification: passed" in r.stdout
    m = onnx.load(str(out))
    w1 = next(t for t in m.graph.initializer if t.name == "w1")
    assert list(w1.dims) == [4, 3, 3, 3]
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest  # input untouched
    import json
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["verification"]["passed"] is True
    assert rep["pruned"]["macs"] < rep["baseline"]["macs"]
    g = [g for g in rep["groups"] if g["kept"] < g["channels"]]
    assert len(g) == 1 and g[0]["channels"] == 8 and len(g[0]["kept_indices"]) == 4


def test_not_onnx(tmp_path):
    src = tmp_path / "in.onnx"
    src.write_text("hello, I am not a model\n" * 10)
    out = tmp_path / "out.onnx"
    assert_clean_failure(run_cli("prune", src, out, "--ratio", "0.3"), str(out))


def test_truncated(tmp_path):
    full = conv_net(tmp_path / "full.onnx").read_bytes()
    src = tmp_path / "in.onnx"
    src.write_bytes(full[: len(full) // 2])
    out = tmp_path / "out.onnx"
    assert_clean_failure(run_cli("prune", src, out, "--ratio", "0.3"), str(out))


def test_missing_external_data(tmp_path):
    src = conv_net(tmp_path / "in.onnx", external=True)
    os.remove(str(src) + ".data")
    out = tmp_path / "out.onnx"
    r = run_cli("prune", src, out, "--ratio", "0.3")
    assert_clean_failure(r, str(out))
    assert "external data" in r.stderr


def test_external_data_loads(tmp_path):
    src = conv_net(tmp_path / "in.onnx", external=True)
    out = tmp_path / "out.onnx"
    r = run_cli("prune", src, out, "--ratio", "0.5", "--no-latency", "-q")
    assert r.returncode == 0, r.stderr


def test_output_equals_input(tmp_path):
    src = conv_net(tmp_path / "in.onnx")
    before = src.read_bytes()
    r = run_cli("prune", src, src, "--ratio", "0.3")
    assert r.returncode != 0 and "input" in r.stderr
    assert src.read_bytes() == before


def test_side_outputs_never_overwrite_the_input_or_the_model(tmp_path):
    src = conv_net(tmp_path / "in.onnx", external=True)
    data = tmp_path / "in.onnx.data"
    before = (src.read_bytes(), data.read_bytes())
    out = tmp_path / "out.onnx"
    for bad in (src, data):
        r = run_cli("prune", src, out, "--ratio", "0.3", "--no-latency", "--report", bad)
        assert_clean_failure(r, str(out))
        r = run_cli("analyze", src, "--no-latency", "--json", bad)
        assert r.returncode == 2 and "refusing" in r.stderr
    r = run_cli("prune", src, data, "--ratio", "0.3", "--no-latency")  # output onto the input's weights
    assert r.returncode == 2 and "external data" in r.stderr
    assert (src.read_bytes(), data.read_bytes()) == before
    r = run_cli("prune", src, out, "--ratio", "0.3", "--no-latency", "--report", out)
    assert_clean_failure(r, str(out))
    r = run_cli("prune", src, out, "--ratio", "0.3", "--no-latency", "--report", tmp_path / "nodir" / "r.json")
    assert_clean_failure(r, str(out))
    assert "folder does not exist" in r.stderr


def test_written_model_follows_umask(tmp_path):
    src = conv_net(tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    old = os.umask(0o022)
    try:
        r = run_cli("prune", src, out, "--ratio", "0.3", "--no-latency", "-q")
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    assert (os.stat(out).st_mode & 0o777) == 0o644


def test_missing_input_file(tmp_path):
    out = tmp_path / "out.onnx"
    assert_clean_failure(run_cli("prune", tmp_path / "nope.onnx", out, "--ratio", "0.3"), str(out))


def test_custom_op_freezes_and_refuses_unverifiable(tmp_path):
    src = conv_net(tmp_path / "in.onnx", custom=True)
    out = tmp_path / "out.onnx"
    r = run_cli("prune", src, out, "--ratio", "0.5", "--no-latency")
    assert_clean_failure(r, str(out))
    assert "--no-verify" in r.stderr
    r = run_cli("analyze", src, "--no-latency", "-q")
    assert r.returncode == 0, r.stderr
    assert "Mystery" in r.stdout and "frozen" in r.stdout
    # every group is frozen (the custom op ties the only inner one to the output): nothing to prune
    r = run_cli("prune", src, out, "--ratio", "0.5", "--no-latency", "--no-verify", "--report", tmp_path / "r.json")
    assert_clean_failure(r, str(out))
    assert "nothing to prune" in r.stderr and "Mystery" in r.stderr
    assert not (tmp_path / "r.json").exists()


def test_bad_ratio_and_missing_ratio(tmp_path):
    src = conv_net(tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    assert_clean_failure(run_cli("prune", src, out, "--ratio", "1.5"), str(out))
    assert_clean_failure(run_cli("prune", src, out), str(out))


def test_input_shape_errors(tmp_path):
    src = conv_net(tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    r = run_cli("prune", src, out, "--ratio", "0.3", "--input-shape", "nope=1x3x8x8")
    assert_clean_failure(r, str(out))
    r = run_cli("prune", src, out, "--ratio", "0.3", "--input-shape", "x=1x3x9x9")
    assert_clean_failure(r, str(out))


def test_metadata_doc_strings_and_names_survive(tmp_path):
    src = conv_net(tmp_path / "in.onnx")
    m = onnx.load(str(src))
    m.doc_string = "model doc"
    m.graph.doc_string = "graph doc"
    m.producer_name, m.producer_version = "myexporter", "9.9"
    onnx.helper.set_model_props(m, {"author": "me", "license": "MIT"})
    onnx.save_model(m, str(src))
    out = tmp_path / "out.onnx"
    r = run_cli(src, out, "--ratio", "0.5", "--no-latency", "-q")
    assert r.returncode == 0, r.stderr
    p = onnx.load(str(out))
    assert p.doc_string == "model doc" and p.graph.doc_string == "graph doc"
    assert (p.producer_name, p.producer_version) == ("myexporter", "9.9")
    assert {e.key: e.value for e in p.metadata_props} == {"author": "me", "license": "MIT"}
    assert [i.name for i in p.graph.input] == ["x"] and [o.name for o in p.graph.output] == ["y"]
    assert p.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_vbp_calib_npz_key_and_lstsq_compensation(tmp_path):
    """The issue-4 command line on a trained model: vbp scores from FILE.npz:KEY, lstsq refit; the
    report records the compensation and the written model runs with the original input name."""
    root = Path(__file__).resolve().parents[1] / "models" / "digits"
    out, rep = tmp_path / "vit.onnx", tmp_path / "r.json"
    r = run_cli(root / "vit.ts.onnx", out, "--ratio", "0.3", "--scorer", "vbp", "--calib",
                f"{root / 'data.npz'}:calib_x", "--compensate", "lstsq", "--no-latency", "-q", "--report", rep)
    assert r.returncode == 0, r.stderr
    report = json.loads(rep.read_text())
    assert report["settings"]["compensate"] == "lstsq" and report["verification"]["passed"]
    assert report["verification"]["lstsq_compensation"]["finite_outputs"]
    assert any("refit" in n for n in report["notes"])
    m = onnx.load(str(out))
    assert [i.name for i in m.graph.input] == ["input"]
    bad = run_cli(root / "vit.ts.onnx", tmp_path / "x.onnx", "--ratio", "0.3", "--compensate", "lstsq")
    assert bad.returncode == 2 and "needs calibration data" in bad.stderr and not (tmp_path / "x.onnx").exists()


def test_version_and_help_mention_implicit_prune():
    from onnxprune import __version__

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"onnxprune {__version__}"
    r = run_cli("--help")
    assert r.returncode == 0 and "onnxprune IN OUT" in r.stdout.replace("\n", " ")


def test_options_before_the_input_are_still_an_implicit_prune(tmp_path):
    src, out = conv_net(tmp_path / "in.onnx"), tmp_path / "out.onnx"
    r = run_cli("--debug", src, out, "--ratio", "0.5", "--no-latency", "-q")
    assert r.returncode == 0 and out.exists(), r.stderr
    r = run_cli("-q", "analyze", src, "--no-latency")  # a command word after the options is not a prune
    assert r.returncode == 2 and not (tmp_path / "analyze").exists()


def test_sigterm_unwinds_cleanly(tmp_path):
    import signal
    import time

    src = Path(__file__).resolve().parents[1] / "models" / "onnx" / "resnet50.ts.onnx"
    out = tmp_path / "out.onnx"
    slow = "sleep 60 && echo latency_ms: 1 # {model}"  # parks the run in a known place
    p = subprocess.Popen([sys.executable, "-m", "onnxprune.cli", "prune", str(src), str(out), "--ratio", "0.3",
                          "--latency-cmd", slow], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(6)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_internal_errors_exit_1_in_one_line(tmp_path, monkeypatch, capsys):
    """A rewrite that comes out broken is onnxprune's fault: one line, exit 1, nothing written."""
    import onnxprune.api as api
    from onnxprune.cli import main

    src, out = conv_net(tmp_path / "in.onnx"), tmp_path / "out.onnx"
    real = api.rewrite

    def broken(analysis, kept):
        m = real(analysis, kept)
        m.graph.node[0].input[1] = "no_such_tensor"
        return m

    monkeypatch.setattr(api, "rewrite", broken)
    assert main([str(src), str(out), "--ratio", "0.5", "--no-latency", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxprune: internal error:")
    assert not out.exists()
