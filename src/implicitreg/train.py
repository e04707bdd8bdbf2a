"""The training loop of a population: batches, schedule, stopping targets, divergence, hooks.

No printing and no file I/O: progress goes to a callback, results come back as values, and the
driver decides what to store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from implicitreg.data import DeviceData
from implicitreg.graphs import GraphedLossAndGrad
from implicitreg.hooks import Hook, LoopContext, Model, evaluate_population, tracking_hooks
from implicitreg.models import build_model
from implicitreg.optim import apply_updates, make_optimizer, select_state
from implicitreg.plan import Group
from implicitreg.population import Population
from implicitreg.sampling import BatchOrders, DropoutMasks, gather_rows, member_labels
from implicitreg.seeding import generator

Progress = Callable[[int, int], None]


Evaluate = Callable[[Model, LoopContext], dict[str, torch.Tensor]]


@dataclass
class MemberResult:
    """Everything one run produced; ``metrics`` rows are (step, name, value)."""

    run_id: str
    status: str
    final_step: int
    target_step: int | None
    metrics: list[tuple[int, str, float]] = field(default_factory=list)


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def build_members(group: Group, data: DeviceData) -> list[torch.nn.Module]:
    """Each member's initial module, drawn from its own init stream (shared with the sequential engine)."""
    out_dim = data.n_classes or 1
    modules = []
    for member in group.members:
        config = group.model.model_copy(update={"init_scale": member.init_scale})
        modules.append(build_model(group.arch, config, data.x_train.shape[1], out_dim, generator(member.seed, "init")))
    return modules


def eval_steps(max_steps: int, every: int) -> set[int]:
    """Steps (counted after the update) at which a population is evaluated: every ``every`` and the last."""
    return {*range(every, max_steps + 1, every), max_steps}


def train_population(
    group: Group,
    data: DeviceData,
    hooks: tuple[Hook, ...] = (),
    progress: Progress | None = None,
    kernel: str = "auto",
) -> list[MemberResult]:
    """Train the members of ``group`` in lockstep and return one :class:`MemberResult` each.

    A member stops when its train accuracy reaches ``train.target_train_acc`` and its train loss
    falls to ``train.target_train_loss`` (each if set; checked at each evaluation); a member whose loss turns non-finite is frozen at its last finite weights and
    reported ``diverged``; the others train on unaffected. Members that stopped are dropped from
    the population at the next evaluation, so they cost nothing afterwards.
    """
    cfg = group.train
    hooks = (*hooks, *tracking_hooks(cfg))
    device, dtype = data.x_train.device, torch_dtype(cfg.dtype)
    members = group.members
    pop = Population(build_members(group, data), loss="cross_entropy" if data.n_classes else "mse",
                     device=device, dtype=dtype, kernel=kernel)
    n = data.x_train.shape[0]
    batch_size = n if cfg.optimizer == "gd" else cfg.batch_size
    index = list(range(len(members)))  # position in ``results`` of each live member
    orders = BatchOrders([m.seed for m in members], n, batch_size, device)
    dropout = DropoutMasks([m.seed for m in members], [m.dropout for m in members], pop.hidden_shapes, device)
    # per-member lr and weight decay live in the optimizer state: members leaving only index it
    optimizer = make_optimizer(cfg, torch.tensor([m.lr for m in members], device=device, dtype=dtype),
                               torch.tensor([m.weight_decay for m in members], device=device, dtype=dtype))
    state = optimizer.init(pop.params)
    labels = torch.stack([member_labels(data.y_train, m, data.n_classes) for m in members])
    context = LoopContext(data, labels, {k: v.clone() for k, v in pop.module_params().items()})
    active = torch.ones(len(members), dtype=torch.bool, device=device)
    diverged_at = torch.zeros(len(members), dtype=torch.int64, device=device)
    results = [MemberResult(m.run_id, "running", 0, None) for m in members]
    evals = eval_steps(cfg.max_steps, cfg.eval_every)
    # on a GPU the forward and backward replay from a CUDA graph (re-captured when members leave)
    loss_and_grad = GraphedLossAndGrad(pop) if device.type == "cuda" else pop.loss_and_grad

    # Nothing in a step reads a device value on the host: batches and masks are drawn on the
    # device, divergence is a mask; evaluations and stopping checks synchronize at their cadence.
    for step in range(1, cfg.max_steps + 1):
        idx = orders.batch(step - 1)
        x, y = gather_rows(data.x_train, idx), context.labels.gather(1, idx)
        loss, grads = loss_and_grad(x, y, dropout.masks(step - 1, idx.shape[1], dtype))
        finite = torch.isfinite(loss)
        diverged_at = torch.where(active & ~finite, step, diverged_at)
        active = active & finite
        updates, state = optimizer.update(grads, state, pop.params, step - 1)
        pop.params = apply_updates(pop.params, updates, active)
        if progress is not None:
            progress(step, cfg.max_steps)
        if not due(step, evals, hooks):
            continue
        context.step = step
        stopped = checkpoint(cfg, hooks, step in evals, pop, context, evaluate_population, diverged_at.cpu(),
                             results, index)
        if bool(stopped.all()):
            break
        if bool(stopped.any()):
            keep = torch.nonzero(~stopped).squeeze(1)
            index = [index[k] for k in keep.tolist()]
            keep = keep.to(device)
            pop.select(keep)
            state = select_state(state, keep)
            orders.select(keep)
            dropout.select(keep)
            context.labels = context.labels[keep]
            context.init_params = {k: v[keep] for k, v in context.init_params.items()}
            active, diverged_at = active[keep], diverged_at[keep]
    finish(results, index, cfg.max_steps)
    return results


def due(step: int, evals: set[int], hooks: tuple[Hook, ...]) -> bool:
    """Whether anything is measured after ``step``: an evaluation or a hook at its cadence."""
    return step in evals or any(step % h.every == 0 for h in hooks)


def checkpoint(cfg, hooks: tuple[Hook, ...], evaluated: bool, model: Model, context: LoopContext,
               evaluate: Evaluate, diverged_at: torch.Tensor, results: list[MemberResult],
               index: list[int]) -> torch.Tensor:
    """Measure the live members at ``context.step`` and settle who stops there; both engines call it.

    Evaluates (if ``evaluated``), checks the stopping targets, runs the hooks due, records every
    value, runs every other hook on the members finishing here (each tracked measure is taken at
    each run's last step, whatever its cadence) and marks results ``done`` or ``diverged``.

    Args:
        model: a population, or one plain module (P = 1). evaluate: ``evaluate(model, context)``
            → the loop's built-in metrics, each [P].
        diverged_at: [P] int64 on the CPU: the step at which a member's loss turned non-finite,
            0 if it never did (a diverged member records nothing more).
        results, index: the results, and the index into them of each of the P members.

    Returns:
        [P] bool on the CPU: the members that stop here (diverged or reached their targets).
    """
    step = context.step
    stopped = diverged_at > 0
    values = evaluate(model, context) if evaluated else {}
    reached = reached_targets(cfg, values) & ~stopped if evaluated else torch.zeros_like(stopped)
    finishing = (reached | (step == cfg.max_steps)) & ~stopped
    due_hooks = [h for h in hooks if step % h.every == 0]
    for hook in due_hooks:
        values.update(hook(model, context))
    _record(results, index, values, step, stopped)
    # on the finishing members alone: Hessian and PAC-Bayes measures cost seconds per member
    last = [h for h in hooks if h not in due_hooks] if bool(finishing.any()) else []
    if last:
        ending = torch.nonzero(finishing).squeeze(1)
        if len(ending) == len(index):
            sub, sub_context = model, context
        else:
            device = context.labels.device
            sub = model.subset(ending.to(device))
            sub_context = LoopContext(context.data, context.labels[ending.to(device)],
                                      {k: v[ending.to(device)] for k, v in context.init_params.items()}, step)
        extra = {name: v for h in last for name, v in h(sub, sub_context).items()}
        _record(results, [index[int(i)] for i in ending], extra, step, torch.zeros(len(ending), dtype=torch.bool))
    for pos, i in enumerate(index):
        if stopped[pos]:
            results[i].status, results[i].final_step = "diverged", int(diverged_at[pos])
        elif reached[pos]:
            results[i].status, results[i].final_step, results[i].target_step = "done", step, step
    return stopped | reached


def finish(results: list[MemberResult], index: list[int], max_steps: int) -> None:
    """Members still running after the last step are done there."""
    for i in index:
        if results[i].status == "running":
            results[i].status, results[i].final_step = "done", max_steps


def reached_targets(cfg, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """[P] bool on the CPU: members that meet every stopping target set (none set: none reached)."""
    targets = [(values["train_acc"] >= cfg.target_train_acc) if cfg.target_train_acc is not None else None,
               (values["train_loss"] <= cfg.target_train_loss) if cfg.target_train_loss is not None else None]
    targets = [t.cpu() for t in targets if t is not None]
    if not targets:
        return torch.zeros(values["train_loss"].shape[0], dtype=torch.bool)
    return torch.stack(targets).all(0)


def _record(results: list[MemberResult], index: list[int], values: dict[str, torch.Tensor], step: int,
            stopped: torch.Tensor) -> None:
    """Append this step's values of the live members (a diverged member records no more)."""
    cpu = {name: v.detach().double().cpu().tolist() for name, v in values.items()}
    for pos, i in enumerate(index):
        if not stopped[pos]:
            results[i].metrics.extend((step, name, column[pos]) for name, column in cpu.items())
