"""The optimizer aliases against torch.optim, on a known optimum, and across members leaving."""

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from implicitreg import optim
from implicitreg.config import TrainConfig

D, H, O, N = 5, 4, 3, 16  # a tiny tanh network on a fixed batch: every step is deterministic
STEPS = 50


def tiny_loss(w: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a one-hidden-layer tanh network (one member's unstacked weights)."""
    return ((torch.tanh(x @ w["w1"].T + w["b1"]) @ w["w2"].T + w["b2"] - y) ** 2).mean()


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, D, generator=g, dtype=torch.float64), torch.randn(N, O, generator=g, dtype=torch.float64)
    return x, y


def initial_params(p: int) -> dict[str, torch.Tensor]:
    """[P, ...] weights, a different draw per member."""
    g = torch.Generator().manual_seed(1)
    shapes = {"w1": (H, D), "b1": (H,), "w2": (O, H), "b2": (O,)}
    return {k: torch.randn(p, *s, generator=g, dtype=torch.float64) for k, s in shapes.items()}


def member_grads(params, x, y):
    """Each member's gradient, computed one member at a time (so both sides see the same numbers)."""
    per_member = []
    for i in range(next(iter(params.values())).shape[0]):
        w = {k: v[i].detach().clone().requires_grad_() for k, v in params.items()}
        per_member.append(dict(zip(w, torch.autograd.grad(tiny_loss(w, x, y), list(w.values())))))
    return {k: torch.stack([g[k] for g in per_member]) for k in params}


def run_ours(opt: optim.Transform, params, x, y, steps=STEPS, leave: tuple[int, list[int]] | None = None):
    """Trajectory [step → params] of a population; ``leave=(step, keep)`` drops members after ``step``."""
    params = {k: v.clone() for k, v in params.items()}
    state = opt.init(params)
    path = []
    for step in range(steps):
        updates, state = opt.update(member_grads(params, x, y), state, params, step)
        params = optim.apply_updates(params, updates, torch.ones(next(iter(params.values())).shape[0], dtype=torch.bool))
        path.append({k: v.clone() for k, v in params.items()})
        if leave is not None and step + 1 == leave[0]:
            keep = torch.tensor(leave[1])
            params, state = {k: v[keep] for k, v in params.items()}, optim.select_state(state, keep)
    return path


@dataclass(frozen=True)
class Case:
    """An alias, its torch.optim counterpart, and learning rates that train the tiny network stably."""

    ours: Callable[..., optim.Transform]  # (lr, weight_decay, schedule) → Transform
    theirs: Callable[..., torch.optim.Optimizer]  # (tensors, lr, weight_decay) → Optimizer
    lrs: tuple[float, float, float]
    sgdw: bool = False  # torch has no decoupled SGD: decay by hand before the step (as the sequential engine)


CASES = {
    "sgd": Case(lambda lr, wd, s: optim.sgd(lr, weight_decay=wd, schedule=s),
                lambda t, lr, wd: torch.optim.SGD(t, lr=lr, weight_decay=wd), (0.2, 0.1, 0.3)),
    "momentum": Case(lambda lr, wd, s: optim.momentum(lr, weight_decay=wd, schedule=s),
                     lambda t, lr, wd: torch.optim.SGD(t, lr=lr, momentum=0.9, weight_decay=wd), (0.05, 0.02, 0.1)),
    "nesterov": Case(lambda lr, wd, s: optim.nesterov(lr, 0.8, weight_decay=wd, schedule=s),
                     lambda t, lr, wd: torch.optim.SGD(t, lr=lr, momentum=0.8, nesterov=True, weight_decay=wd),
                     (0.05, 0.02, 0.1)),
    "sgdw-momentum": Case(lambda lr, wd, s: optim.momentum(lr, weight_decay=wd, decoupled_weight_decay=True, schedule=s),
                          lambda t, lr, wd: torch.optim.SGD(t, lr=lr, momentum=0.9), (0.05, 0.02, 0.1), sgdw=True),
    "adam": Case(lambda lr, wd, s: optim.adam(lr, weight_decay=wd, schedule=s),
                 lambda t, lr, wd: torch.optim.Adam(t, lr=lr, weight_decay=wd), (0.01, 0.003, 0.03)),
    "adamw": Case(lambda lr, wd, s: optim.adamw(lr, 0.8, 0.99, 1e-6, weight_decay=wd, schedule=s),
                  lambda t, lr, wd: torch.optim.AdamW(t, lr=lr, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd),
                  (0.01, 0.003, 0.03)),
    "adagrad": Case(lambda lr, wd, s: optim.adagrad(lr, weight_decay=wd, schedule=s),
                    lambda t, lr, wd: torch.optim.Adagrad(t, lr=lr, weight_decay=wd), (0.1, 0.05, 0.2)),
    "adagrad-accumulator": Case(
        lambda lr, wd, s: optim.adagrad(lr, 1e-6, 0.1, weight_decay=wd, schedule=s),
        lambda t, lr, wd: torch.optim.Adagrad(t, lr=lr, eps=1e-6, initial_accumulator_value=0.1, weight_decay=wd),
        (0.1, 0.05, 0.2)),
    "rmsprop": Case(lambda lr, wd, s: optim.rmsprop(lr, weight_decay=wd, schedule=s),
                    lambda t, lr, wd: torch.optim.RMSprop(t, lr=lr, weight_decay=wd), (0.01, 0.003, 0.02)),
    "rmsprop-centered-momentum": Case(
        lambda lr, wd, s: optim.rmsprop(lr, 0.9, 1e-6, 0.5, True, weight_decay=wd, schedule=s),
        lambda t, lr, wd: torch.optim.RMSprop(t, lr=lr, alpha=0.9, eps=1e-6, momentum=0.5, centered=True,
                                              weight_decay=wd),
        (0.01, 0.003, 0.02)),
}


def run_torch(case: Case, params, member: int, lr: float, wd: float, schedule, x, y, steps=STEPS):
    """One member's trajectory under its own torch.optim optimizer (scheduled by setting the lr)."""
    tensors = {k: v[member].clone().requires_grad_() for k, v in params.items()}
    opt = case.theirs(list(tensors.values()), lr, 0.0 if case.sgdw else wd)
    path = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * schedule(step)
        opt.zero_grad()
        tiny_loss(tensors, x, y).backward()
        if case.sgdw:
            with torch.no_grad():
                for t in tensors.values():
                    t.mul_(1.0 - lr * schedule(step) * wd)
        opt.step()
        path.append({k: v.detach().clone() for k, v in tensors.items()})
    return path


def test_every_alias_has_a_reference_case():
    assert set(optim.ALIASES) <= set(CASES)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("p", [1, 3])
@pytest.mark.parametrize("name", sorted(CASES))
def test_alias_matches_torch_optim_member_by_member(problem, name, p, schedule):
    """Each member of a population (own lr and weight decay) follows its own torch.optim run.

    float64, 50 steps: both sides do the same arithmetic up to operation order, ~1e-16 per step,
    so 1e-12 relative (to the largest weight) leaves wide headroom and still catches any wrong term.
    """
    case = CASES[name]
    x, y = problem
    lrs, wds = list(case.lrs[:p]), [1e-2, 0.0, 5e-2][:p]  # P = 1 decays; P = 3 mixes decay with none
    sched = optim.schedule_fn(schedule, STEPS)
    params = initial_params(p)
    ours = run_ours(case.ours(torch.tensor(lrs, dtype=torch.float64), torch.tensor(wds, dtype=torch.float64),
                              sched), params, x, y)
    for i in range(p):
        theirs = run_torch(case, params, i, lrs[i], wds[i], sched, x, y)
        for step, (a, b) in enumerate(zip(ours, theirs)):
            for k in b:
                err = (a[k][i] - b[k]).abs().max() / b[k].abs().max()
                assert err <= 1e-12, (name, i, step, k, float(err))
    moved = max(float((ours[-1][k] - params[k]).abs().max()) for k in params)
    assert moved > 1e-2, "the weights should have moved"


QUADRATIC_LRS = {"sgd": (0.05, 0.1, 0.15), "momentum": (0.01, 0.02, 0.05), "nesterov": (0.01, 0.02, 0.05),
                 "adam": (0.05, 0.1, 0.2), "adamw": (0.05, 0.1, 0.2), "adagrad": (0.5, 1.0, 2.0),
                 "rmsprop": (0.01, 0.02, 0.03)}


@pytest.mark.parametrize("name", sorted(optim.ALIASES))
def test_alias_converges_to_the_optimum_of_a_quadratic(name):
    """½(w − w*)ᵀA(w − w*) + ½λ‖w‖² (A: eigenvalues 1…10) has its minimum at (A + λI)⁻¹Aw*.

    Three members with their own η and coupled λ ∈ {0, 0.1, 0.5}; 2000 steps with a cosine
    schedule (RMSprop's steps are ~η in size whatever the gradient: it needs η → 0 to settle).
    Measured: every member ends within 1e-14 relative of its optimum; the bound is 1e-10.
    AdamW runs with λ = 0: with decoupled decay its fixed point on a quadratic has no closed form
    (it tends to an ℓ∞-constrained minimizer only slowly); its decay is held to torch.optim.AdamW above.
    """
    g = torch.Generator().manual_seed(0)
    d, steps = 6, 2000
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(1, 10, d, dtype=torch.float64)) @ q.T
    w_star = torch.randn(d, generator=g, dtype=torch.float64)
    wds = [0.0, 0.0, 0.0] if name == "adamw" else [0.0, 0.1, 0.5]
    opt = optim.ALIASES[name](torch.tensor(QUADRATIC_LRS[name], dtype=torch.float64),
                              weight_decay=torch.tensor(wds, dtype=torch.float64),
                              schedule=optim.schedule_fn("cosine", steps))
    params = {"w": torch.zeros(3, d, dtype=torch.float64)}
    state = opt.init(params)
    for step in range(steps):
        updates, state = opt.update({"w": (params["w"] - w_star) @ a}, state, params, step)
        params = optim.apply_updates(params, updates, torch.ones(3, dtype=torch.bool))
    for i, wd in enumerate(wds):
        optimum = torch.linalg.solve(a + wd * torch.eye(d, dtype=torch.float64), a @ w_star)
        err = float((params["w"][i] - optimum).norm() / optimum.norm())
        assert err <= 1e-10, (name, i, err)


@pytest.mark.parametrize("name", sorted(CASES))
def test_members_leaving_do_not_change_the_kept_members_trajectory(problem, name):
    """Dropping members 1 and 3 after step 20 (select_state, same transform): members 0 and 2 go on
    exactly — bitwise — as in the run that kept all four (their own lr, λ and moments stayed with them)."""
    case = CASES[name]
    x, y = problem
    lrs = torch.tensor([case.lrs[0], case.lrs[1], case.lrs[2], case.lrs[1] / 2], dtype=torch.float64)
    wds = torch.tensor([1e-2, 0.0, 5e-2, 1e-1], dtype=torch.float64)
    params = initial_params(4)
    full = run_ours(case.ours(lrs, wds, optim.schedule_fn("cosine", STEPS)), params, x, y)
    opt = case.ours(lrs, wds, optim.schedule_fn("cosine", STEPS))
    left = run_ours(opt, params, x, y, leave=(20, [0, 2]))
    for step in range(STEPS):
        kept = [0, 1, 2, 3] if step < 20 else [0, 2]
        for k in params:
            assert torch.equal(left[step][k], full[step][k][kept]), (name, step, k)


def test_select_state_indexes_moments_and_hyperparameters_and_keeps_counters():
    opt = optim.adamw(torch.tensor([1.0, 2.0, 3.0]), weight_decay=torch.tensor([0.1, 0.2, 0.3]))
    params = {"w": torch.ones(3, 2)}
    state = opt.init(params)
    _, state = opt.update({"w": torch.ones(3, 2)}, state, params, 0)
    kept = optim.select_state(state, torch.tensor([2, 0]))
    adam_state, lr_state, decay_state = kept
    assert adam_state["t"] == 1 and adam_state["m"]["w"].shape == (2, 2)
    assert lr_state["lr"].tolist() == [3.0, 1.0]
    assert decay_state["lr"].tolist() == [3.0, 1.0]
    assert decay_state["weight_decay"].tolist() == pytest.approx([0.3, 0.1])
    mask = optim.select_state(state, torch.tensor([True, False, True]))
    assert mask[1]["lr"].tolist() == [1.0, 3.0]


@pytest.mark.parametrize("name", sorted(optim.ALIASES))
def test_alias_contract_shapes_dtypes_and_inputs_untouched(name):
    """Updates have the parameters' shapes and dtype; grads and params are never modified in place;
    the same inputs give the same updates; a float hyperparameter is shared by every member."""
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        # three identical members: with shared hyperparameters their updates must be identical
        params = {"w": torch.randn(1, 4, 2, generator=g, dtype=dtype).repeat(3, 1, 1),
                  "b": torch.randn(1, 2, generator=g, dtype=dtype).repeat(3, 1)}
        updates = []
        for _ in range(2):
            opt = optim.ALIASES[name](0.1, weight_decay=0.01, schedule=optim.schedule_fn("linear", 10))
            state = opt.init(params)
            assert all(t.dtype == dtype for t in _tensors(state))
            for step in range(3):
                grads = {k: torch.full_like(v, 0.5 + step) for k, v in params.items()}
                before = ({k: v.clone() for k, v in grads.items()}, {k: v.clone() for k, v in params.items()})
                out, state = opt.update(grads, state, params, step)
                assert all(torch.equal(grads[k], before[0][k]) and torch.equal(params[k], before[1][k]) for k in params)
                assert {k: (v.shape, v.dtype) for k, v in out.items()} == {k: (v.shape, v.dtype) for k, v in params.items()}
            updates.append(out)
        assert all(torch.equal(updates[0][k], updates[1][k]) for k in params)
        assert all(torch.equal(updates[0][k][i], updates[0][k][0]) for k in params for i in (1, 2))
        assert all(bool(updates[0][k].ne(0).all()) for k in params)


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _tensors(v)
    elif isinstance(tree, (tuple, list)):
        for v in tree:
            yield from _tensors(v)


def test_no_decay_piece_when_every_lambda_is_zero():
    """λ = 0 for all members leaves the decay out of the chain (no extra arithmetic, as before)."""
    params = {"w": torch.ones(2, 3)}
    assert len(optim.momentum(0.1).init(params)) == 2  # trace, lr
    assert len(optim.momentum(0.1, weight_decay=torch.zeros(2)).init(params)) == 2
    assert len(optim.momentum(0.1, weight_decay=torch.tensor([0.0, 0.1])).init(params)) == 3
    assert len(optim.sgd(0.1, weight_decay=0.1, decoupled_weight_decay=True).init(params)) == 2  # lr, decay


@pytest.mark.parametrize("optimizer", ["gd", "sgd", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_make_optimizer_is_the_alias_the_config_names(problem, optimizer, mode, schedule):
    """Every TrainConfig option maps to one alias call: equal trajectories, bitwise."""
    x, y = problem
    cfg = TrainConfig(optimizer=optimizer, weight_decay_mode=mode, schedule=schedule, max_steps=20, momentum=0.8,
                      betas=(0.85, 0.99), eps=1e-7)
    lr, wd = torch.tensor([0.05, 0.01, 0.02], dtype=torch.float64), torch.tensor([0.0, 1e-2, 0.1], dtype=torch.float64)
    common = dict(weight_decay=wd, schedule=optim.schedule_fn(schedule, 20))
    decoupled = mode == "decoupled"
    alias = {
        "gd": lambda: optim.sgd(lr, weight_decay=wd, decoupled_weight_decay=decoupled, schedule=common["schedule"]),
        "sgd": lambda: optim.sgd(lr, weight_decay=wd, decoupled_weight_decay=decoupled, schedule=common["schedule"]),
        "momentum": lambda: optim.momentum(lr, 0.8, decoupled_weight_decay=decoupled, **common),
        "nesterov": lambda: optim.nesterov(lr, 0.8, decoupled_weight_decay=decoupled, **common),
        "adam": lambda: (optim.adamw(lr, 0.85, 0.99, 1e-7, **common) if decoupled
                         else optim.adam(lr, 0.85, 0.99, 1e-7, **common)),
    }[optimizer]()
    params = initial_params(3)
    a = run_ours(optim.make_optimizer(cfg, lr, wd), params, x, y, steps=20)
    b = run_ours(alias, params, x, y, steps=20)
    assert all(torch.equal(a[-1][k], b[-1][k]) for k in params)


@pytest.mark.parametrize("make,match", [
    (lambda: optim.sgd(-0.1), "lr: expected a value >= 0.0, got -0.1"),
    (lambda: optim.momentum(0.1, 1.0), r"momentum: expected a value in \[0.0, 1.0\), got 1.0"),
    (lambda: optim.adam(0.1, b2=1.5), r"b2: expected a value in \[0.0, 1.0\)"),
    (lambda: optim.rmsprop(0.1, alpha=-0.1), "alpha"),
    (lambda: optim.adagrad(0.1, eps=-1.0), "eps"),
    (lambda: optim.sgd(0.1, weight_decay=-1.0), "weight_decay: expected a value >= 0.0"),
])
def test_bad_hyperparameters_say_what_was_expected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_per_member_hyperparameters_must_have_one_value_per_member():
    params = {"w": torch.ones(3, 2)}
    with pytest.raises(ValueError, match=r"lr: expected a float or a tensor of shape \[3\].*got shape \[2\]"):
        optim.sgd(torch.tensor([0.1, 0.2])).init(params)
    with pytest.raises(ValueError, match="weight_decay: expected non-negative values"):
        optim.sgd(0.1, weight_decay=torch.tensor([0.1, -0.1, 0.0])).init(params)
    with pytest.raises(TypeError, match="lr: expected a float or a tensor of shape \\[P\\], got str"):
        optim.sgd("0.1")
