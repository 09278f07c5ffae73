"""The seed-and-user interval of `oneranker.study.stats` on hand cases whose answer is known:
each error source alone, neither, the paired difference, and coverage of a simulated truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from oneranker.study.stats import paired_seed_user_interval, seed_user_interval


def _half(interval: list[float]) -> float:
    return (interval[2] - interval[1]) / 2


def _t_975(df: int) -> float:
    """Closed forms of the Student-t 0.975 quantile, independent of the module's numeric one."""
    p = 0.975
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    raise ValueError(df)


def test_identical_seeds_leave_only_the_user_bootstrap():
    rng = np.random.default_rng(3)
    users = (rng.random(500) < 0.3).astype(np.float64)
    one_seed = seed_user_interval(users[None])
    three_identical_seeds = seed_user_interval(np.stack([users] * 3))
    assert three_identical_seeds == pytest.approx(one_seed, abs=1e-12)  # the seed part adds nothing
    # the user part alone: > 0, and a 95% bootstrap half-width is ~1.96 standard errors of the mean
    standard_error = users.std() / math.sqrt(users.size)
    assert _half(one_seed) > 0
    assert _half(one_seed) == pytest.approx(1.96 * standard_error, rel=0.1)


@pytest.mark.parametrize("seed_means", [[0.30, 0.36], [0.30, 0.32, 0.35]])
def test_identical_users_leave_only_the_seed_t_interval(seed_means):
    seed_means = np.array(seed_means)
    per_seed = np.repeat(seed_means[:, None], 200, axis=1)  # every user the same within a seed
    mean, lo, hi = seed_user_interval(per_seed)
    num_seeds = seed_means.size
    expected_half = _t_975(num_seeds - 1) * seed_means.std(ddof=1) / math.sqrt(num_seeds)
    assert mean == pytest.approx(seed_means.mean(), abs=1e-12)
    assert (hi - lo) / 2 == pytest.approx(expected_half, rel=1e-3)  # numeric t quantile: ~1e-4
    assert lo == pytest.approx(mean - expected_half, rel=1e-3)


def test_no_variance_at_all_is_a_point():
    assert seed_user_interval(np.full((4, 50), 0.25)) == [0.25, 0.25, 0.25]
    assert seed_user_interval(np.full(50, 0.25)) == [0.25, 0.25, 0.25]  # [U]: one seed


def test_paired_difference_of_identical_and_shifted_arrays():
    rng = np.random.default_rng(0)
    b = rng.integers(0, 8, size=(3, 120)) / 8.0  # dyadic values: b + 0.25 - b is exact
    assert paired_seed_user_interval(b, b) == [0.0, 0.0, 0.0]
    assert paired_seed_user_interval(b + 0.25, b) == [0.25, 0.25, 0.25]
    with pytest.raises(ValueError):
        paired_seed_user_interval(b, b[:, 1:])


def test_covers_a_simulated_truth_that_the_user_bootstrap_alone_misses():
    """value[s, u] = truth + seed effect (sd 0.05) + user effect (sd 0.2) + noise (sd 0.1): with
    S = 5 seeds and U = 300 users the spread over seeds is as large as the one over users."""
    rng = np.random.default_rng(7)
    repetitions, num_seeds, num_users, truth = 200, 5, 300, 0.4
    covered = user_only_covered = 0
    for rep in range(repetitions):
        per_seed = (
            truth
            + rng.normal(0, 0.05, (num_seeds, 1))
            + rng.normal(0, 0.2, (1, num_users))
            + rng.normal(0, 0.1, (num_seeds, num_users))
        )
        _, lo, hi = seed_user_interval(per_seed, n_boot=400, seed=rep)
        covered += lo <= truth <= hi
        user_means = per_seed.mean(0)
        user_half = 1.96 * user_means.std(ddof=1) / math.sqrt(num_users)
        user_only_covered += abs(user_means.mean() - truth) <= user_half
    assert covered / repetitions >= 0.85
    assert user_only_covered / repetitions < 0.8  # training randomness ignored: too narrow
