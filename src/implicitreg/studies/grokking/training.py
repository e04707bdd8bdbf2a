"""grokking: the three arms as one population, trained by the engine, with the embedding's spectrum recorded.

Every member shares the architecture, the data and the optimizer; they differ in seed, weight decay and
init scale, which the engine carries per member (:class:`~implicitreg.plan.Member`), so the whole study is
one vectorized computation (:func:`implicitreg.train.train_population`).
"""

from __future__ import annotations

from typing import Any

import torch

from implicitreg.config import MLPConfig, TrainConfig
from implicitreg.models import ModuleConfig
from implicitreg.data import Dataset
from implicitreg.hooks import LoopContext, Model
from implicitreg.plan import Group, Member
from implicitreg.population import Population
from implicitreg.studies.base import ProgressBar, SolvedRun
from implicitreg.studies.grokking.fourier import TOP, frequency_power, top_fraction, unit_concentration
from implicitreg.studies.grokking.model import factory
from implicitreg.train import train_population

ARMS = ("decay", "no-decay", "small-init")
TOP_NAME = f"fourier_top{TOP}"
INIT_NAME = f"{TOP_NAME}_init"
UNIT_NAME = "fourier_unit_top1"
FIRST_LAYER = "layers.0.weight"  # the MLP's first Linear: [h, 2p], one column per input token


def power_name(k: int) -> str:
    """The metric holding the final power of frequency ``k`` (1 … ⌊p/2⌋)."""
    return f"power_k{k}"


def arm_settings(config: Any, arm: str) -> tuple[float, float]:
    """(weight decay, init scale) of an arm."""
    return {"decay": (config.weight_decay, config.init_scale), "no-decay": (0.0, config.init_scale),
            "small-init": (0.0, config.small_init_scale)}[arm]


class SpectrumHook:
    """The embedding's Fourier concentration at every evaluation, its full spectrum at the last step.

    Returns per member [P]: ``fourier_top6`` (share of the power in the 6 strongest frequencies),
    ``fourier_unit_top1`` (each unit's share in its own strongest frequency, power-weighted), at the
    first call also ``fourier_top6_init`` (the same at the initialization), and at step ``last`` the power
    ``power_k{k}`` of every frequency k = 1 … ⌊p/2⌋.
    """

    name = "fourier-spectrum"

    def __init__(self, p: int, every: int, last: int):
        self.p, self.every, self.last = p, every, last
        self._first = True

    def __call__(self, model: Model, context: LoopContext) -> dict[str, torch.Tensor]:
        if isinstance(model, Population):
            weight = model.module_params()[FIRST_LAYER]
        else:  # one plain module (P = 1)
            weight = dict(model.named_parameters())[FIRST_LAYER][None]
        power = frequency_power(weight, self.p)  # [P, ⌊p/2⌋]
        values = {TOP_NAME: top_fraction(power), UNIT_NAME: unit_concentration(weight, self.p)}
        if self._first:
            values[INIT_NAME] = top_fraction(frequency_power(context.init_params[FIRST_LAYER], self.p))
            self._first = False
        if context.step == self.last:
            values.update({power_name(k): power[:, k - 1] for k in range(1, power.shape[1] + 1)})
        return values


def group(config: Any) -> Group:
    """The population: every arm × seed, full-batch AdamW (decoupled decay) for ``config.steps`` steps."""
    data = config.data()
    train = TrainConfig(optimizer="adam", lr=config.lr, betas=config.betas, batch_size=data.n_train,
                        max_steps=config.steps, target_train_acc=None, eval_every=config.eval_every,
                        weight_decay_mode="decoupled", dtype="float32")
    members = []
    for arm in ARMS:
        decay, scale = arm_settings(config, arm)
        for seed in range(config.seeds):
            members.append(Member(run_id(arm, seed), seed=seed, lr=config.lr, weight_decay=decay, init_scale=scale,
                                  arm=arm, tags={"arm": arm}))
    if config.activation == "quadratic":  # Gromov's network, through the engine's vmap kernel
        return Group("module", ModuleConfig(factory=factory(config.width), init_scale=config.init_scale), data, train,
                     tuple(members))
    return Group("mlp", MLPConfig(hidden=[config.width], init_scale=config.init_scale), data, train, tuple(members))


def run_id(arm: str, seed: int) -> str:
    return f"{arm}/seed{seed}"


def train_arms(config: Any, data: Dataset, progress: ProgressBar) -> list[SolvedRun]:
    """Train every arm and seed in one population; one :class:`SolvedRun` per member, its settings in its
    config (arm, seed, weight decay, init scale, and the shared ones)."""
    plan = group(config)
    bar = progress("AdamW on modular addition (all arms and seeds)", config.steps)
    hook = SpectrumHook(config.p, config.eval_every, config.steps)
    results = train_population(plan, data.tensors("cpu", torch.float32), hooks=(hook,),
                               progress=lambda step, total: bar(step))
    shared = {"activation": config.activation, "p": config.p, "train_fraction": config.train_fraction, "n_train": data.n_train,
              "n_test": len(data.y_test), "width": config.width, "lr": config.lr, "steps": config.steps,
              "eval_every": config.eval_every}
    runs = []
    for member, result in zip(plan.members, results):
        settings = {"arm": member.arm, "seed": member.seed, "weight_decay": member.weight_decay,
                    "init_scale": member.init_scale, **shared}
        runs.append(SolvedRun(result.run_id, member.arm, settings, result.metrics, result.final_step, member.seed,
                              result.status, result.target_step))
    return runs
