"""SP-LAMP scores (Eq. 2): in original order, top channel exactly 1, ties and zeros deterministic."""
from __future__ import annotations

import numpy as np
import pytest

from onnxprune.scoring.lamp import cumulative_keep_values, sp_lamp_scores


def reference(s):
    """Direct transcription of Eq. 2 with a stable ascending order."""
    order = sorted(range(len(s)), key=lambda k: s[k])
    out = [0.0] * len(s)
    for pos, u in enumerate(order):
        denom = sum(s[v] for v in order[pos:])
        out[u] = s[u] / denom if denom > 0 else 0.0
    out[order[-1]] = 1.0
    return np.array(out)


def test_small_example_in_original_order():
    s = np.array([3.0, 1.0, 2.0, 6.0])
    # ascending 1, 2, 3, 6: 1/12, 2/11, 3/9, 6/6
    np.testing.assert_allclose(sp_lamp_scores(s), [3 / 9, 1 / 12, 2 / 11, 1.0])


def test_matches_the_formula_on_random_vectors():
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = rng.lognormal(0, 2, int(rng.integers(1, 30)))
        np.testing.assert_allclose(sp_lamp_scores(s), reference(list(s)), rtol=1e-12)


def test_top_channel_scores_exactly_one_and_scores_are_monotone_in_saliency():
    rng = np.random.default_rng(1)
    s = rng.random(100) ** 4
    sc = sp_lamp_scores(s)
    assert sc[np.argmax(s)] == 1.0
    assert np.all((sc >= 0) & (sc <= 1))
    order = np.argsort(s, kind="stable")
    assert np.all(np.diff(sc[order]) >= 0)


def test_zeros_and_ties_are_deterministic():
    assert sp_lamp_scores(np.zeros(3)).tolist() == [0.0, 0.0, 1.0]  # 0/0 -> 0, the last-ranked still 1
    np.testing.assert_allclose(sp_lamp_scores(np.array([2.0, 2.0])), [0.5, 1.0])  # stable: higher index ranks higher
    np.testing.assert_allclose(sp_lamp_scores(np.array([0.0, 5.0, 0.0])), [0.0, 1.0, 0.0])
    assert sp_lamp_scores(np.array([7.0])).tolist() == [1.0]
    assert sp_lamp_scores(np.array([])).size == 0


def test_bad_saliencies():
    for bad in (np.array([1.0, -1.0]), np.array([np.nan]), np.ones((2, 2))):
        with pytest.raises(ValueError):
            sp_lamp_scores(bad)


def test_cumulative_keep_values():
    sc = sp_lamp_scores(np.array([3.0, 1.0, 2.0, 6.0]))
    v = cumulative_keep_values(sc)
    np.testing.assert_allclose(v, np.cumsum([1.0, 3 / 9, 2 / 11, 1 / 12]))
    assert v[0] == 1.0 and np.all(np.diff(v) >= 0)
