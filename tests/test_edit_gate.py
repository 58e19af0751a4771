"""The COMPOSE gate's solve (lql.edit.insert.selective_direction): on at the fact, off on
the negatives, and not firing at the earlier positions it is given (``quiet``)."""

from __future__ import annotations

import numpy as np
import pytest

from lql.edit.insert import NEGATIVE_MARGIN, selective_direction


def _case(seed: int, dim: int = 64, n_neg: int = 6, n_quiet: int = 20):
    rng = np.random.default_rng(seed)
    template = rng.standard_normal(dim)
    u = (template + 0.5 * rng.standard_normal(dim)).astype(np.float32)
    negatives = (template + 0.5 * rng.standard_normal((n_neg, dim))).astype(np.float32)
    quiet = rng.standard_normal((n_quiet, dim)).astype(np.float32)
    return u, negatives, quiet


def test_gate_is_on_at_the_fact_and_off_on_the_negatives():
    u, negatives, _ = _case(0)
    w = selective_direction(u, negatives)
    assert float(w @ u) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(negatives @ w, NEGATIVE_MARGIN, rtol=1e-2)


@pytest.mark.parametrize("seed", range(5))
def test_quiet_positions_come_out_off_and_only_those_needed_cost_norm(seed):
    u, negatives, quiet = _case(seed)
    plain = selective_direction(u, negatives)
    assert (quiet @ plain > 0).any()                 # the plain gate fires at some of them
    w = selective_direction(u, negatives, quiet)
    assert float(w @ u) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(negatives @ w, NEGATIVE_MARGIN, rtol=1e-2)
    assert (quiet @ w <= 1e-3).all()                 # none of them fires now
    # every quiet position as an equality costs more norm than the active set
    from lql.edit import insert
    every = np.concatenate([u[None], negatives, quiet]).astype(np.float64)
    b = np.concatenate([[1.0], np.full(len(negatives), NEGATIVE_MARGIN),
                        np.full(len(quiet), insert.QUIET_MARGIN)])
    full = every.T @ np.linalg.solve(every @ every.T, b)
    assert np.linalg.norm(w) < np.linalg.norm(full)
