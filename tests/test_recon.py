"""--scorer recon: greedy removal by least least-squares reconstruction error, checked against a brute
force that refits the consumer on the calibration activations themselves (numpy lstsq with an
intercept, one candidate channel at a time), and end to end with --compensate lstsq."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from helpers import GraphBuilder, group_at
from onnx import helper

from onnxprune import analyze_model
from onnxprune.planning.ratio import select_by_ratio
from onnxprune.scoring.calibration import CalibSet, cached_stats
from onnxprune.scoring.recon import ReconTerm, greedy_scores, make_term, remove_block
from onnxprune.scoring.registry import ScoreContext, score_groups
from onnxprune.transform.compensate import compensate, compensation_spaces
from onnxprune.transform.rewrite import rewrite

RNG = np.random.default_rng(11)
W1 = RNG.standard_normal((7, 6)).astype(np.float32)
W1[4] = 2.0 * W1[2] + 0.02 * W1[1]  # channel 4 ~ 2 x channel 2 after the Relu: nearly free to rebuild
W1[6] = W1[0] + 0.05 * W1[5]        # channel 6 ~ channel 0: cheap
W1[3] *= 0.05                       # channel 3: the least variance, but unique and read with large weights
W2 = (RNG.standard_normal((3, 7)) * np.array([1.0, 0.3, 2.0, 30.0, 0.2, 1.0, 0.7])).astype(np.float32)


def mlp():
    """x(6) -> Gemm(6->7) -> Relu -> Gemm(7->3): one prunable group of 7 hidden channels."""
    b = GraphBuilder(seed=0)
    x = b.input("x", [6])
    h = b.op("Relu", [b.op("Gemm", [x, b.const(W1, "w1")], transB=1, name="fc1")], name="act")
    return b.model([b.op("Gemm", [h, b.const(W2, "w2")], transB=1, name="fc2")])


def calib(n=300):
    return np.random.default_rng(2).standard_normal((n, 6)).astype(np.float32)


def hidden(model, x):
    m = type(model)()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_empty_tensor_value_info("act_out"))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(["act_out"], {"x": x})[0].astype(np.float64)


def refit_error(h, keep, w2=W2):
    """min over B, c of mean ||W2 h - (B h_K + c)||^2 on the data: numpy lstsq, no covariance algebra."""
    y = h @ np.asarray(w2, np.float64).T
    X = np.concatenate([h[:, keep], np.ones((len(h), 1))], axis=1)
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    return float(np.square(y - X @ beta).sum() / len(h))


def brute_force_greedy(h, n_remove, w2=W2):
    alive = list(range(h.shape[1]))
    order = []
    for _ in range(n_remove):
        errs = {c: refit_error(h, [k for k in alive if k != c], w2) for c in alive}
        best = min(errs, key=lambda c: (errs[c], c))
        order.append(best)
        alive.remove(best)
    return order


def test_greedy_order_matches_brute_force():
    model, x = mlp(), calib()
    a = analyze_model(model)
    ctx = ScoreContext(a, calib=CalibSet({"x": x}, batch_size=64))
    g = group_at(a, "act_out", 1)
    pos = next(m for m in g.members if m.tensor == "act_out").index_map
    s = score_groups(a, "recon", context=ctx)[g.id][pos]  # per hidden position
    expect = brute_force_greedy(hidden(model, x), 5)
    assert expect[0] in (2, 4)  # the exact duplicate goes first
    assert list(np.argsort(s, kind="stable")[:5]) == expect


GAMMA = np.array([0.02, 25.0, 0.3], np.float32)
VAR = np.array([4.0, 0.25, 1.0], np.float32)


def mlp_bn():
    """mlp() with an inference BatchNormalization on fc2's 3 outputs: the deployed output is
    s * (W2 h) + t with s = gamma / sqrt(var + eps), so output 1 weighs ~2500x output 0."""
    b = GraphBuilder(seed=0)
    x = b.input("x", [6])
    h = b.op("Relu", [b.op("Gemm", [x, b.const(W1, "w1")], transB=1, name="fc1")], name="act")
    y = b.op("Gemm", [h, b.const(W2, "w2")], transB=1, name="fc2")
    bn = [b.const(GAMMA, "bn.scale"), b.const(np.array([0.1, -0.2, 0.3], np.float32), "bn.bias"),
          b.const(np.array([0.5, -1.0, 2.0], np.float32), "bn.mean"), b.const(VAR, "bn.var")]
    return b.model([b.op("BatchNormalization", [y, *bn], epsilon=1e-5, name="bn")])


def test_recon_measures_the_error_after_the_consumers_batchnorm():
    """The greedy order is brute-force lstsq on the BN's output (rows of W2 scaled by s), not on
    fc2's output: the deployed model's error."""
    model, x = mlp_bn(), calib()
    a = analyze_model(model)
    ctx = ScoreContext(a, calib=CalibSet({"x": x}, batch_size=64))
    g = group_at(a, "act_out", 1)
    pos = next(m for m in g.members if m.tensor == "act_out").index_map
    s = score_groups(a, "recon", context=ctx)[g.id][pos]
    h = hidden(model, x)
    w2_bn = W2.astype(np.float64) * (GAMMA / np.sqrt(VAR + 1e-5)).astype(np.float64)[:, None]
    expect = brute_force_greedy(h, 5, w2_bn)
    assert expect != brute_force_greedy(h, 5)  # the BN changes which channels go
    assert list(np.argsort(s, kind="stable")[:5]) == expect


def test_obs_update_equals_direct_schur_complement():
    """Removing a block P at once adds tr(W_P [(H^-1)_PP]^-1 W_P^T): the same as refitting directly."""
    rng = np.random.default_rng(0)
    h = rng.standard_normal((500, 5)) @ rng.standard_normal((5, 5))
    cov = np.cov(h.T, bias=True)
    w = rng.standard_normal((3, 5))
    t = make_term(np.arange(5), cov, w)
    lam = t.hinv  # keep a copy of the regularized inverse for the direct formula
    H = np.linalg.inv(lam)
    R, K = [1, 3], [0, 2, 4]
    schur = H[np.ix_(R, R)] - H[np.ix_(R, K)] @ np.linalg.solve(H[np.ix_(K, K)], H[np.ix_(K, R)])
    direct = np.trace(w[:, R] @ schur @ w[:, R].T)
    assert remove_block(t, np.array(R)) == pytest.approx(direct, rel=1e-9)
    # the survivors' refit weights reproduce W x from x_K: W_K' = W_K + W_R A, A = H_RK H_KK^-1
    A = H[np.ix_(R, K)] @ np.linalg.inv(H[np.ix_(K, K)])
    np.testing.assert_allclose(t.w[:, K], w[:, K] + w[:, R] @ A, rtol=1e-9, atol=1e-12)


def test_scores_rise_along_the_greedy_order_and_frozen_channels_stay():
    rng = np.random.default_rng(4)
    cov = np.cov(rng.standard_normal((200, 6)).T)
    t = make_term(np.arange(6), cov, rng.standard_normal((2, 6)))
    frozen = np.zeros(6, bool)
    frozen[5] = True
    s = greedy_scores([t], 6, frozen)
    assert s[5] == s.max() and np.sum(s == s.max()) == 2  # frozen and the last survivor: never removed
    assert len(set(s[s < s.max()])) == 4
    assert isinstance(t, ReconTerm)


def test_recon_with_lstsq_reconstructs_better_than_vbp_with_lstsq():
    model, x = mlp(), calib()
    a = analyze_model(model)
    ctx = ScoreContext(a, calib=CalibSet({"x": x}, batch_size=64))
    x_test = np.random.default_rng(9).standard_normal((200, 6)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x_test})[0]
    errs = {}
    for scorer in ("recon", "vbp"):
        kept = select_by_ratio(a.groups, score_groups(a, scorer, context=ctx), 3 / 7)
        stats = cached_stats(ctx, compensation_spaces(a, kept), cov=True)
        out = compensate(a, kept, rewrite(a, kept), stats, "lstsq").model
        y = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x_test})[0]
        errs[scorer] = float(np.square(y - ref).mean())
    assert errs["recon"] < 0.5 * errs["vbp"], errs


def mlp2():
    """x(6) -> Gemm(6->7) -> Relu -> Gemm(7->5) -> Relu -> Gemm(5->3): two hidden groups whose recon
    scores differ in scale (fc2 reads a wide, redundant layer; fc3 a narrow one)."""
    b = GraphBuilder(seed=0)
    x = b.input("x", [6])
    h = b.op("Relu", [b.op("Gemm", [x, b.const(W1, "w1")], transB=1, name="fc1")], name="act")
    w2 = RNG.standard_normal((5, 7)).astype(np.float32)
    h2 = b.op("Relu", [b.op("Gemm", [h, b.const(w2, "w2")], transB=1, name="fc2")], name="act2")
    w3 = (RNG.standard_normal((3, 5)) * 5.0).astype(np.float32)
    return b.model([b.op("Gemm", [h2, b.const(w3, "w3")], transB=1, name="fc3")])


def test_global_recon_ranks_the_relative_errors_as_they_are():
    """recon's scores are shares of each consumer's output energy, one scale for every group: --global
    removes the channels of lowest share across groups (no division by a group mean), never the last
    of a group."""
    model, x = mlp2(), calib()
    a = analyze_model(model)
    ctx = ScoreContext(a, calib=CalibSet({"x": x}, batch_size=64))
    scores = score_groups(a, "recon", context=ctx)
    groups = [g for g in a.groups if g.prunable]
    assert len(groups) == 2 and scores.comparable
    entries = sorted((float(scores[g.id][c]), g.id, c) for g in groups for c in range(g.size))
    for n in range(1, 10):
        left, removed = {g.id: g.size for g in groups}, {g.id: set() for g in groups}
        for _, gid, c in entries:
            if sum(map(len, removed.values())) == n:
                break
            if left[gid] > 1:
                removed[gid].add(c)
                left[gid] -= 1
        kept = select_by_ratio(a.groups, scores, n / 12, global_rank=True)
        for g in groups:
            assert set(range(g.size)) - set(kept.get(g.id, np.arange(g.size)).tolist()) == removed[g.id], (n, g.id)
