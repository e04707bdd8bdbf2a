"""The sequential engine: one plain ``nn.Module`` + ``torch.optim`` loop per run.

This is the loop a user would write, and the reference the population is tested against: it
computes loss, gradients, updates and evaluation with stock PyTorch, and shares with the
population engine the plan — random streams (:mod:`implicitreg.sampling`), initial modules,
tracked measures (the same hooks, on the plain module) and the rules for stopping targets and
divergence (:func:`implicitreg.train.checkpoint`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from implicitreg.data import DeviceData
from implicitreg.hooks import Hook, LoopContext, tracking_hooks
from implicitreg.optim import schedule_fn
from implicitreg.plan import Group, Member
from implicitreg.sampling import BatchOrders, DropoutMasks, member_labels
from implicitreg.train import (
    MemberResult,
    Progress,
    build_members,
    checkpoint,
    due,
    eval_steps,
    finish,
    torch_dtype,
)


def make_torch_optimizer(model: nn.Module, group: Group, member: Member) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer matching ``group.train`` (AdamW / decayed SGD when decoupled)."""
    cfg = group.train
    coupled = cfg.weight_decay_mode == "coupled"
    wd = member.weight_decay if coupled else 0.0
    if cfg.optimizer == "adam":
        if coupled:
            return torch.optim.Adam(model.parameters(), lr=member.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=wd)
        return torch.optim.AdamW(model.parameters(), lr=member.lr, betas=cfg.betas, eps=cfg.eps,
                                 weight_decay=member.weight_decay)
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(model.parameters(), lr=member.lr, eps=cfg.eps, weight_decay=wd)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=member.lr, eps=cfg.eps, weight_decay=wd)
    momentum = cfg.momentum if cfg.optimizer in ("momentum", "nesterov") else 0.0
    return torch.optim.SGD(model.parameters(), lr=member.lr, momentum=momentum,
                           nesterov=cfg.optimizer == "nesterov", weight_decay=wd)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, masks, classification: bool) -> torch.Tensor:
    out = model(x) if masks is None else model(x, masks)  # a user's own module takes x alone
    return F.cross_entropy(out, y) if classification else F.mse_loss(out.squeeze(-1), y)


@contextmanager
def _measuring(model: nn.Module) -> Iterator[None]:
    """Evaluation and tracked measures see the function the model computes at test time (eval
    mode: BatchNorm's running statistics, no dropout); training steps run in train mode."""
    model.eval()
    try:
        yield
    finally:
        model.train()


@torch.no_grad()
def _evaluate(model: nn.Module, context: LoopContext) -> dict[str, torch.Tensor]:
    """The loop's built-in metrics of one module (labels [1, n], init params [1, ...]): each [1]."""
    data, labels = context.data, context.labels[0]
    classification = data.n_classes > 0
    values = {}
    for split, x, y in (("train", data.x_train, labels), ("test", data.x_test, data.y_test)):
        out = model(x)
        values[f"{split}_loss"] = float(_loss(model, x, y, None, classification))
        values[f"{split}_acc"] = float((out.argmax(1) == y).double().mean()) if classification else float("nan")
    values["gap"] = (values["train_acc"] - values["test_acc"] if classification
                     else values["test_loss"] - values["train_loss"])
    params = dict(model.named_parameters())
    values["l2_norm"] = float(torch.sqrt(sum((p.double() ** 2).sum() for p in params.values())))
    values["dist_init"] = float(torch.sqrt(sum(((p.double() - context.init_params[k][0].double()) ** 2).sum()
                                               for k, p in params.items())))
    return {name: torch.tensor([value], dtype=torch.float64) for name, value in values.items()}


def train_member(group: Group, member: Member, module: nn.Module, data: DeviceData,
                 progress: Progress | None = None, hooks: tuple[Hook, ...] = ()) -> MemberResult:
    """Train one run with a stock PyTorch loop; same schedule, tracked measures, stopping and divergence rules."""
    cfg = group.train
    hooks = (*hooks, *tracking_hooks(cfg))
    device = data.x_train.device
    dtype = torch_dtype(cfg.dtype)
    model = module.to(device=device, dtype=dtype)
    classification = data.n_classes > 0
    labels = member_labels(data.y_train, member, data.n_classes)
    context = LoopContext(data, labels.unsqueeze(0),
                          {k: p.detach().clone().unsqueeze(0) for k, p in model.named_parameters()})
    n = data.x_train.shape[0]
    order = BatchOrders([member.seed], n, n if cfg.optimizer == "gd" else cfg.batch_size, device)
    shapes = model.hidden_shapes() if hasattr(model, "hidden_shapes") else []  # a user's module has no masks
    dropout = DropoutMasks([member.seed], [member.dropout], shapes, device)
    optimizer = make_torch_optimizer(model, group, member)
    schedule = schedule_fn(cfg.schedule, cfg.max_steps)
    evals = eval_steps(cfg.max_steps, cfg.eval_every)
    decoupled_sgd = cfg.weight_decay_mode == "decoupled" and cfg.optimizer != "adam" and member.weight_decay > 0
    results = [MemberResult(member.run_id, "running", 0, None)]
    for step in range(1, cfg.max_steps + 1):
        idx = order.batch(step - 1)[0]
        masks = dropout.masks(step - 1, len(idx), dtype)
        masks = None if masks is None else [m[0] for m in masks]
        for group_ in optimizer.param_groups:
            group_["lr"] = member.lr * schedule(step - 1)
        optimizer.zero_grad()
        loss = _loss(model, data.x_train[idx], labels[idx], masks, classification)
        context.step = step
        if not torch.isfinite(loss):  # frozen at its last finite weights: nothing more to measure
            with _measuring(model):
                checkpoint(cfg, (), False, model, context, _evaluate, torch.tensor([step]), results, [0])
            break
        loss.backward()
        if decoupled_sgd:
            # torch.optim.SGD, Adagrad and RMSprop have no decoupled decay: w ← (1 − ηλ)w, then their step
            # from the gradient at the old w (SGDW and its kin; as optim.add_decoupled_decay)
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.0 - member.lr * schedule(step - 1) * member.weight_decay)
        optimizer.step()
        if progress is not None:
            progress(step, cfg.max_steps)
        if due(step, evals, hooks):
            with _measuring(model):
                stopped = bool(checkpoint(cfg, hooks, step in evals, model, context, _evaluate,
                                          torch.zeros(1, dtype=torch.int64), results, [0])[0])
            if stopped:
                break
    finish(results, [0], cfg.max_steps)
    return results[0]


def train_sequential(group: Group, data: DeviceData, progress: Progress | None = None,
                     hooks: tuple[Hook, ...] = ()) -> list[MemberResult]:
    """Train every member of ``group`` one after another (``hooks`` as :func:`~implicitreg.train.train_population`'s)."""
    modules = build_members(group, data)
    return [train_member(group, member, module, data, progress, hooks)
            for member, module in zip(group.members, modules)]
