"""The shared solvers of implicitreg.dynamics against closed forms: GD on a quadratic, GD on least
squares, the tolerance and divergence stops, torch parameters updated in place, the recording grids."""

import math

import numpy as np
import pytest
import torch

from implicitreg.dynamics import descend, gd_update, log_steps, recording_steps
from implicitreg.dynamics import squared_loss


def quadratic(d=4, seed=0):
    """A positive-definite A [d, d] (eigenvalues in [0.5, 3]) and a minimizer w* [d]."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a = q @ np.diag(np.linspace(0.5, 3.0, d)) @ q.T
    return a, rng.standard_normal(d)


def quadratic_loss_and_grad(a, w_star):
    """L(w) = ½(w − w*)ᵀA(w − w*), ∇L = A(w − w*)."""
    def loss_and_grad(params):
        e = params[0] - w_star
        return 0.5 * float(e @ a @ e), [a @ e]
    return loss_and_grad


def test_gd_on_a_quadratic_follows_the_closed_form_at_every_recorded_step():
    a, w_star = quadratic()
    w0, lr, steps = np.zeros(4), 0.3, 200
    grid = recording_steps(steps, 20)
    result = descend(quadratic_loss_and_grad(a, w_star), [w0.copy()], steps, gd_update(lr), record=grid)
    assert result.step == steps and not result.converged and not result.diverged
    assert [k for k, _ in result.trace] == sorted(grid)
    contraction = np.eye(4) - lr * a
    for k, (w,) in result.trace:
        expected = w_star + np.linalg.matrix_power(contraction, k) @ (w0 - w_star)  # w_k = w* + (I − ηA)^k (w₀ − w*)
        np.testing.assert_allclose(w, expected, rtol=1e-12, atol=1e-13)
    assert result.params[0] is not w0  # the caller's start is kept when it passes a copy
    np.testing.assert_array_equal(w0, np.zeros(4))


def test_tolerance_stops_at_the_first_step_whose_loss_reaches_it():
    # 1-d: L_k = ½a(1 − ηa)^{2k}(w₀ − w*)², so the first k with L_k ≤ tol is known in closed form
    a, lr, tol = 2.0, 0.1, 1e-6
    result = descend(quadratic_loss_and_grad(np.array([[a]]), np.array([1.0])), [np.zeros(1)], 10_000,
                     gd_update(lr), tol=tol)
    first = math.ceil(math.log(tol / (0.5 * a)) / (2 * math.log(1 - lr * a)))
    assert result.converged and not result.diverged
    assert result.step in (first, first + 1)  # rounding at the boundary only
    assert result.loss <= tol
    assert [k for k, _ in result.trace] == [result.step]


def test_divergence_stops_when_the_loss_exceeds_the_factor_and_skips_the_observer():
    # η > 2/a: |1 − ηa| = 1.5, L_k = L₀·1.5^{2k} first exceeds 10·L₀ at k = 3 (1.5⁶ ≈ 11.4; 1.5⁴ ≈ 5.1)
    a, lr = 1.0, 2.5
    seen = []
    result = descend(quadratic_loss_and_grad(np.array([[a]]), np.array([1.0])), [np.zeros(1)], 100,
                     gd_update(lr), diverge=10.0, observe=lambda step, params, loss, aux: seen.append(step))
    assert result.diverged and not result.converged and result.step == 3
    assert seen == [0, 1, 2]
    assert result.loss == pytest.approx(0.5 * 1.5 ** 6)


def test_a_non_finite_loss_is_divergence():
    result = descend(lambda params: (math.nan, [np.zeros(1)]), [np.zeros(1)], 10, gd_update(0.1), diverge=1e6)
    assert result.diverged and result.step == 0


def test_step_size_callable_gets_the_auxiliary_value_and_progress_is_reported():
    a, w_star = quadratic(d=3, seed=1)
    base = quadratic_loss_and_grad(a, w_star)
    seen, ticks = [], []

    def lr(step, params, grads, aux):
        seen.append(aux)
        return 0.2

    result = descend(lambda params: (*base(params), f"aux{len(seen)}"), [np.zeros(3)], 5, gd_update(lr),
                     progress=ticks.append, every=2)
    plain = descend(base, [np.zeros(3)], 5, gd_update(0.2))
    np.testing.assert_array_equal(result.params[0], plain.params[0])
    assert seen == [f"aux{i}" for i in range(5)] and ticks == [0, 2, 4]


def test_torch_leaves_are_updated_in_place_like_numpy():
    a, w_star = quadratic(d=3, seed=2)
    at, wt = torch.from_numpy(a), torch.from_numpy(w_star)
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)

    def loss_and_grad(params):
        e = params[0] - wt
        loss = 0.5 * e @ at @ e
        return loss.item(), torch.autograd.grad(loss, params)

    result = descend(loss_and_grad, [w], 50, gd_update(0.3))
    assert result.params[0] is w
    reference = descend(quadratic_loss_and_grad(a, w_star), [np.zeros(3)], 50, gd_update(0.3))
    np.testing.assert_allclose(w.detach().numpy(), reference.params[0], rtol=1e-13)


def test_gd_on_least_squares_from_zero_reaches_the_pseudo_inverse_solution():
    rng = np.random.default_rng(3)
    n, d = 8, 20
    x, y = rng.standard_normal((n, d)), rng.standard_normal(n)
    path = squared_loss.gd(x, y, np.zeros(d), n / np.linalg.norm(x, 2) ** 2, 100_000, 1e-13)
    assert path.converged and path.steps[0] == 0 and path.steps[-1] == path.final_step
    assert np.all(np.diff(path.steps) > 0)
    np.testing.assert_allclose(path.w, np.linalg.pinv(x) @ y, rtol=1e-9, atol=1e-11)


def test_least_squares_paths_match_the_closed_form_of_gd():
    # w_t = X⁺y + (I − ηXᵀX/n)^t (w₀ − X⁺y) holds exactly for the consistent system
    rng = np.random.default_rng(4)
    n, d = 5, 9
    x, y = rng.standard_normal((n, d)), rng.standard_normal(n)
    w0, lr = rng.standard_normal(d), 0.5 * n / np.linalg.norm(x, 2) ** 2
    path = squared_loss.gd(x, y, w0, lr, 300, 1e-30, points=15)
    assert not path.converged and path.final_step == 300
    star, contraction = np.linalg.pinv(x) @ y, np.eye(d) - lr * x.T @ x / n
    for k, w in zip(path.steps, path.weights):
        np.testing.assert_allclose(w, star + np.linalg.matrix_power(contraction, int(k)) @ (w0 - star),
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("floor", [False, True])
def test_log_steps_keep_both_ends_and_round_as_asked(floor):
    grid = log_steps(1500, 60, floor=floor)
    raw = np.geomspace(1, 1500, 60)
    expected = np.unique(np.floor(raw) if floor else np.round(raw)).astype(np.int64)
    np.testing.assert_array_equal(grid, expected)
    assert grid[0] == 1 and grid[-1] == 1500 and grid.dtype == np.int64
    assert recording_steps(1500, 60, floor=floor) == {0, *grid.tolist()}
    assert log_steps(5, 60).tolist() == [1, 2, 3, 4, 5] and log_steps(0, 10).size == 0
    assert recording_steps(0, 10) == {0}
