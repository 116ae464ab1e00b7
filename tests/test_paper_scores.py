"""Each paper's equation transcribed by hand with numpy on a small graph built with onnx.helper, held
against the scorers and the planning that uses them (issue #12):

- SP-LAMP Eq. 2 (producer filter x consumer slice, LAMP within the layer) and Eq. 3 (last layer);
- SP-LAMP Sec. 3.1 global ranking of LAMP scores, and LAMP applied once in the budget knapsack;
- OCSPruner's group saliency (the authors' GroupNormV2Importance);
- DEPrune's PW-conv filter norm, and l2 on the weights the deployed model computes with (BN folded);
- VBP's activation variance and its bias fold.

The hand formulas loop over channels the way the papers write them; none calls the project's
scoring helpers.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from helpers import GraphBuilder, group_at
from onnx import helper

from onnxprune import analyze_model
from onnxprune.planning.choices import group_choices
from onnxprune.planning.ratio import select_by_ratio
from onnxprune.scoring.calibration import CalibSet, cached_stats
from onnxprune.scoring.registry import SCORERS, ScoreContext, score_groups
from onnxprune.transform.compensate import compensate, compensation_spaces
from onnxprune.transform.rewrite import rewrite

EPS = 1e-5
RNG = np.random.default_rng(7)
W1 = RNG.standard_normal((8, 2, 3, 3)).astype(np.float32) * 0.3
B1 = RNG.standard_normal(8).astype(np.float32) * 0.1
GAMMA = RNG.uniform(0.2, 2.0, 8).astype(np.float32)
BETA = RNG.standard_normal(8).astype(np.float32) * 0.5
# running statistics large enough to dominate any sum that wrongly counts them as weights
MEAN = (RNG.standard_normal(8) * 6).astype(np.float32)
VAR = RNG.lognormal(1.5, 1.2, 8).astype(np.float32)
W2 = RNG.standard_normal((6, 8, 1, 1)).astype(np.float32) * 0.4
B2 = RNG.standard_normal(6).astype(np.float32) * 0.1
WF = RNG.standard_normal((4, 6)).astype(np.float32) * 0.5  # Gemm B with transB=1: (out, in)
BF = np.zeros(4, np.float32)


def conv_bn_conv():
    """x -> Conv1(2->8, 3x3) -> BN -> Relu -> Conv2(8->6, 1x1) -> Relu -> GAP -> Flatten -> Gemm(6->4)."""
    b = GraphBuilder(seed=0)
    x = b.input("x", [2, 6, 6])
    y = b.op("Conv", [x, b.const(W1, "w1"), b.const(B1, "b1")], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = b.op("BatchNormalization", [y, b.const(GAMMA, "gamma"), b.const(BETA, "beta"), b.const(MEAN, "mean"),
                                    b.const(VAR, "var")], name="bn", epsilon=EPS)
    y = b.op("Relu", [y], name="relu1")
    y = b.op("Relu", [b.op("Conv", [y, b.const(W2, "w2"), b.const(B2, "b2")], name="conv2", kernel_shape=[1, 1])],
             name="relu2")
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)
    return b.model([b.op("Gemm", [y, b.const(WF, "wf"), b.const(BF, "bf")], name="fc", transB=1)])


def canonical(a, tensor, axis, per_position):
    """Values given per position of (tensor, axis), in the group's canonical channel order."""
    g = group_at(a, tensor, axis)
    m = next(m for m in g.members if (m.tensor, m.axis) == (tensor, axis))
    out = np.empty(g.size)
    out[m.index_map] = per_position
    return g, out


def lamp_by_hand(s):
    """LAMP / SP-LAMP Eq. 2: channels sorted ascending; score(u) = s_u / sum over v >= u of s_v."""
    s = [float(v) for v in s]
    order = sorted(range(len(s)), key=lambda k: (s[k], k))
    out = [0.0] * len(s)
    for pos, u in enumerate(order):
        out[u] = s[u] / sum(s[v] for v in order[pos:])
    return np.array(out)


def bn_affine():
    scale = GAMMA.astype(np.float64) / np.sqrt(VAR.astype(np.float64) + EPS)
    return scale, BETA - MEAN * scale


def test_sp_lamp_folded_eq2_on_the_deployed_filter():
    """Eq. 2: ||W_l,u||_F^2 x ||What_l+1,u||_F^2 over the surviving channels, with W_l the filter the
    deployed model computes with (conv1 with BN folded: W * gamma / sqrt(var + eps)); running
    statistics are not weights (issue #12, defect 1)."""
    a = analyze_model(conv_bn_conv())
    scale, _ = bn_affine()
    prod = np.array([((W1[u].astype(np.float64) * scale[u]) ** 2).sum() for u in range(8)])
    cons = np.array([(W2[:, u].astype(np.float64) ** 2).sum() for u in range(8)])
    g, expect = canonical(a, "w1", 0, lamp_by_hand(prod * cons))
    np.testing.assert_allclose(score_groups(a, "sp-lamp-folded")[g.id], expect, rtol=1e-9)


def test_sp_lamp_is_the_paper_form_on_the_raw_filter():
    """The default sp-lamp is Eq. 2 as written: the stored conv1 filter, the BN after it (scale and
    running statistics) ignored."""
    a = analyze_model(conv_bn_conv())
    prod = np.array([(W1[u].astype(np.float64) ** 2).sum() for u in range(8)])
    cons = np.array([(W2[:, u].astype(np.float64) ** 2).sum() for u in range(8)])
    g, expect = canonical(a, "w1", 0, lamp_by_hand(prod * cons))
    np.testing.assert_allclose(score_groups(a, "sp-lamp")[g.id], expect, rtol=1e-9)
    assert "sp-lamp-paper" not in SCORERS


def last_layer_model():
    """Conv(2->5) -> Relu -> Conv(5->7) -> Relu -> ReduceMean over C, H, W: conv2's channels feed no weight."""
    b = GraphBuilder(seed=0)
    x = b.input("x", [2, 6, 6])
    y = b.op("Relu", [b.op("Conv", [x, b.const(W1[:5], "c1")], kernel_shape=[3, 3])])
    w = RNG.standard_normal((7, 5, 3, 3)).astype(np.float32)
    y = b.op("Relu", [b.op("Conv", [y, b.const(w, "c2")], kernel_shape=[3, 3])])
    return b.model([b.op("ReduceMean", [y], axes=[1, 2, 3], keepdims=0)]), w


def test_sp_lamp_eq3_last_layer():
    model, w = last_layer_model()
    a = analyze_model(model)
    g = group_at(a, "c2", 0)
    assert g.prunable
    s = np.array([(w[u].astype(np.float64) ** 2).sum() for u in range(7)])
    g, expect = canonical(a, "c2", 0, lamp_by_hand(s))
    np.testing.assert_allclose(score_groups(a, "sp-lamp")[g.id], expect, rtol=1e-9)


def test_knapsack_values_are_lamp_applied_once():
    """Eq. 5: the value of keeping p channels is the sum of the p largest SP-LAMP scores (defect 3:
    the budget path normalized the scorer's LAMP scores a second time)."""
    a = analyze_model(conv_bn_conv())
    scores = score_groups(a, "sp-lamp")
    for c in group_choices(a.prunable_groups, scores):
        top = np.sort(scores[c.group.id])[::-1]
        np.testing.assert_allclose(c.values, [top[:w].sum() for w in c.widths], rtol=1e-12)


def two_layer_mlp():
    """x(12) -> Gemm(12->10) -> Relu -> Gemm(10->9) -> Relu -> Gemm(9->3): two prunable groups
    whose saliencies differ by orders of magnitude, as layers of a trained net do."""
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((10, 12)) * np.geomspace(0.05, 2.0, 10)[:, None]
    w2 = rng.standard_normal((9, 10)) * 3.0
    w3 = rng.standard_normal((3, 9)) * np.geomspace(1.0, 0.2, 9)[None, :]
    b = GraphBuilder(seed=0)
    x = b.input("x", [12])
    y = x
    for i, w in enumerate((w1, w2, w3)):
        y = b.op("Gemm", [y, b.const(w.astype(np.float32), f"g{i}")], transB=1, name=f"fc{i}")
        if i < 2:
            y = b.op("Relu", [y])
    return b.model([y]), [w.astype(np.float32).astype(np.float64) for w in (w1, w2, w3)]


def test_global_ranking_is_one_ranking_of_lamp_scores():
    """Sec. 3.1: compute every layer's SP-LAMP scores, prune the globally lowest ones until the
    sparsity is met (defect 4: --global divided by the group mean instead)."""
    model, (w1, w2, w3) = two_layer_mlp()
    a = analyze_model(model)
    layers = {}
    for name, w_prod, w_cons in (("g0", w1, w2), ("g1", w2, w3)):
        s = [(w_prod[u] ** 2).sum() * (w_cons[:, u] ** 2).sum() for u in range(w_prod.shape[0])]
        g, lamp = canonical(a, name, 0, lamp_by_hand(s))
        layers[g.id] = lamp
    ratio = 0.5
    n_remove = int(round(ratio * sum(len(v) for v in layers.values())))
    pool = sorted((v, gid, c) for gid, lamp in layers.items() for c, v in enumerate(lamp))
    expect = {gid: sorted(set(range(len(lamp))) - {c for _, g2, c in pool[:n_remove] if g2 == gid})
              for gid, lamp in layers.items()}
    kept = select_by_ratio(a.groups, score_groups(a, "sp-lamp"), ratio, global_rank=True)
    got = {gid: sorted(kept[gid].tolist()) if gid in kept else list(range(len(layers[gid]))) for gid in layers}
    assert got == expect
    assert [len(v) for v in got.values()] != [len(v) for v in (range(10), range(9))]


def test_ocspruner_group_saliency():
    """GroupNormV2Importance (p=2): per conv/linear slice sum w^2 / sqrt(slice size), BN adds gamma^2
    only (no beta, no running statistics, no biases), the sum divided by the number of members."""
    a = analyze_model(conv_bn_conv())
    w1 = W1.astype(np.float64).reshape(8, -1)       # conv1 out-channel slices, 18 elements each
    w2 = W2.astype(np.float64).transpose(1, 0, 2, 3).reshape(8, -1)  # conv2 in-channel slices, 6 each
    sal = [((w1[u] ** 2).sum() / np.sqrt(w1.shape[1]) + (w2[u] ** 2).sum() / np.sqrt(w2.shape[1])
            + float(GAMMA[u]) ** 2) / 3 for u in range(8)]
    g, expect = canonical(a, "w1", 0, sal)
    np.testing.assert_allclose(score_groups(a, "saliency")[g.id], expect, rtol=1e-6)
    # the 6-channel group: conv2 out slices (8 each) and the Gemm's input columns (4 each)
    sal6 = [((W2[u].astype(np.float64) ** 2).sum() / np.sqrt(8) + (WF[:, u].astype(np.float64) ** 2).sum() / 2) / 2
            for u in range(6)]
    g6, expect6 = canonical(a, "w2", 0, sal6)
    np.testing.assert_allclose(score_groups(a, "saliency")[g6.id], expect6, rtol=1e-6)


def test_l2_is_the_deployed_weights_and_l2_filter_is_deprune():
    """l2: every slice the channel owns as the deployed model computes with it: conv1's folded filter,
    the folded bias s*b + t, conv2's input slice (defect 5: running statistics were summed as
    weights). l2-filter: DEPrune's PW-conv filter norm ||W_u||_2, the stored producer filter alone."""
    a = analyze_model(conv_bn_conv())
    scale, shift = bn_affine()
    l2 = [np.sqrt(((W1[u].astype(np.float64) * scale[u]) ** 2).sum() + (scale[u] * B1[u] + shift[u]) ** 2
                  + (W2[:, u].astype(np.float64) ** 2).sum()) for u in range(8)]
    g, expect = canonical(a, "w1", 0, l2)
    np.testing.assert_allclose(score_groups(a, "l2")[g.id], expect, rtol=1e-6)
    _, filt = canonical(a, "w1", 0, [np.sqrt((W1[u].astype(np.float64) ** 2).sum()) for u in range(8)])
    np.testing.assert_allclose(score_groups(a, "l2-filter")[g.id], filt, rtol=1e-6)


def exposed(model, tensor, x):
    m = type(model)()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_empty_tensor_value_info(tensor))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run([tensor], {"x": x})[0].astype(np.float64)


def test_vbp_variance_and_its_bias_fold():
    """VBP: score = Var[x_c] over samples and positions at the consumer's input; a removed channel's
    mean m_c folds into the consumer's bias: b' = b + sum over removed c of m_c * sum_taps W[:, c]."""
    model = conv_bn_conv()
    x = np.random.default_rng(1).standard_normal((40, 2, 6, 6)).astype(np.float32)
    a = analyze_model(model)
    ctx = ScoreContext(a, calib=CalibSet({"x": x}, batch_size=16))
    act = exposed(a.view.model, "relu1_out", x)
    g, var = canonical(a, "relu1_out", 1, act.var(axis=(0, 2, 3)))
    scores = score_groups(a, "vbp", context=ctx)
    np.testing.assert_allclose(scores[g.id], var, rtol=1e-5)
    kept = select_by_ratio(a.groups, {g.id: scores[g.id]}, 0.5)
    pruned = rewrite(a, kept)
    stats = cached_stats(ctx, compensation_spaces(a, kept))
    out = compensate(a, kept, pruned, stats, "mean").model
    pos = next(m for m in g.members if m.tensor == "relu1_out").index_map
    removed_pos = [p for p in range(8) if pos[p] not in set(kept[g.id].tolist())]
    mean = act.mean(axis=(0, 2, 3))
    expect = B2.astype(np.float64) + sum(mean[p] * W2[:, p].astype(np.float64).sum(axis=(1, 2)) for p in removed_pos)
    conv2 = next(n for n in out.graph.node if n.name == "conv2")
    bias = next(t for t in out.graph.initializer if t.name == conv2.input[2])
    np.testing.assert_allclose(np.frombuffer(bias.raw_data, np.float32) if bias.raw_data else bias.float_data,
                               expect, rtol=1e-4, atol=1e-6)
