"""grokking: with weight decay a network memorizes modular addition first and generalizes much later.

Power, Burda, Edwards, Babuschkin & Misra (2022), "Grokking: generalization beyond overfitting on small
algorithmic datasets"; Liu, Michaud & Tegmark (2023), "Omnigrok: grokking beyond algorithmic data";
Gromov (2023), "Grokking modular arithmetic"; Nanda, Chan, Lieberum, Smith & Steinhardt (2023), "Progress
measures for grokking via mechanistic interpretability".

Task and model (Gromov's setting, the cheapest that groks): the p² pairs (a, b) of residues mod p, a
random ``train_fraction`` of them for training (:func:`implicitreg.data.modular`), the one-hot vectors of
a and b concatenated into a two-layer network of ``width`` hidden units — by default Gromov's quadratic
activation without biases, f(x) = W₂(W₁x)² (:mod:`.model`; ``activation=relu``: the engine's ReLU MLP with
biases) — PyTorch's default init times the init scale, p outputs and the cross-entropy loss, full-batch
AdamW (decoupled weight decay, Power et al.'s β₂ = 0.98), trained as one population of every arm and
seed by the population engine (:func:`implicitreg.train.train_population`). Settings: p = 97, train
fraction 0.3 (Power et al. and Nanda et al. use 0.3–0.5), weight decay 1 (Power et al., Nanda et al.),
learning rate 5e-3 (the papers use 1e-3 to 5e-3; the larger end keeps the run within the CPU budget),
width 128 (Gromov uses wider networks; 128 already fits and generalizes), 2000 steps. Three arms:

- ``decay``: weight decay ``weight_decay`` at init scale ``init_scale``;
- ``no-decay``: no weight decay, the same init;
- ``small-init``: no weight decay at init scale ``small_init_scale`` (Omnigrok: at a small weight norm the
  implicit regularization of the dynamics takes the place of the explicit one).

Claim checked, from train and test accuracy, the weight norm and the embedding's Fourier spectrum, all
evaluated every ``eval_every`` steps (the resolution of every steps-to-threshold):

- with decay, in more than half of the seeds the run "groks": test accuracy reaches 95% after train
  accuracy has reached 99%, with a delay ratio (steps to test ≥ 95%) / (steps to train ≥ 99%) ≥ 5;
- without decay at the same init, in fewer than half of the seeds does test accuracy reach 95% within the
  budget (while train accuracy does reach 99%, which is reported);
- without decay at the small init, test accuracy reaches 95% in more than half of the seeds;
- with decay, the ℓ2 norm of the weights falls between the train-fit step and the test-fit step (the
  ratio of the two, averaged over the grokking seeds, is < 1);
- the learned embedding (first-layer weight column per input token) concentrates its Fourier power in a
  few frequencies: the share of the power (frequencies 1 … ⌊p/2⌋, both operands) in the top 6 is ≥ 0.5
  on average over the decay arm's seeds — a random embedding spreads it evenly (6/48 = 0.125 for p = 97
  plus fluctuation; the value at initialization is reported beside it), while Nanda et al. find the
  trained network's embedding sparse in the Fourier basis, with a handful of key frequencies (5 for
  p = 113) carrying nearly all of its norm.

Pieces: the data set :mod:`implicitreg.data.modular`; the spectrum :mod:`.fourier`; training through the
engine with a hook that records the spectrum (:mod:`.training`); table, checks and notes :mod:`.analysis`;
figures :mod:`.figures`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from implicitreg.config import DataConfig, Strict
from implicitreg.data import Dataset, load_dataset
from implicitreg.studies.base import Analysis, ProgressBar, Solved
from implicitreg.studies.grokking import analysis, figures
from implicitreg.studies.grokking.training import ARMS, train_arms

__all__ = ["ARMS", "Config", "Grokking", "STUDY"]


class Config(Strict):
    """Configuration of ``grokking``; every field can be set with ``--set``."""

    p: int = Field(97, ge=17, description="the modulus (Power et al. and Gromov: 97; at least 17, so that the top 6 of its ⌊p/2⌋ frequencies leave some out)")
    train_fraction: float = Field(0.3, gt=0.0, lt=1.0, description="share of the p² pairs used for training")
    data_seed: int = Field(0, ge=0, description="seed of the train/test split")
    activation: Literal["quadratic", "relu"] = Field(
        "quadratic", description="quadratic: Gromov's W₂(W₁x)², no biases; relu: the engine's MLP (with biases)")
    width: int = Field(128, ge=1, description="hidden units of the two-layer MLP")
    seeds: int = Field(3, ge=1, description="initializations per arm")
    lr: float = Field(5e-3, gt=0.0, description="AdamW learning rate")
    betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW betas (Power et al.: β₂ = 0.98)")
    weight_decay: float = Field(1.0, gt=0.0, description="decoupled weight decay of the decay arm")
    init_scale: float = Field(1.0, gt=0.0, description="init scale (× PyTorch's default) of decay and no-decay")
    small_init_scale: float = Field(0.01, gt=0.0, description="init scale of the small-init arm (no decay)")
    steps: int = Field(2000, ge=1, description="full-batch AdamW steps of every run")
    eval_every: int = Field(50, ge=1, description="evaluation cadence: the resolution of steps to a threshold")

    def data(self) -> DataConfig:
        """The data set as a :class:`DataConfig` (``dim`` is the modulus, ``n_train`` the train pairs)."""
        return DataConfig(name="modular", dim=self.p, n_train=max(2, round(self.train_fraction * self.p ** 2)),
                          seed=self.data_seed)


class Grokking:
    name = "grokking"
    claim = ("With weight decay a two-layer MLP on modular addition fits the training pairs first and reaches "
             "high test accuracy much later (delay ratio ≥ 5), while its weight norm falls and its embedding "
             "concentrates on a few Fourier frequencies; without decay at the same init it does not generalize "
             "within the budget; at a small init it generalizes without decay.")
    paper = "Power et al. 2022; Liu, Michaud & Tegmark 2023; Gromov 2023; Nanda et al. 2023"
    Config = Config
    # quick, full: measured wall time with --threads 1 on 2 CPU cores shared with other jobs (CPU time 0.7 and
    # 3.0 min; under a heavier load the same runs took 3.7 and 9.0 min)
    minutes = (1.2, 3.5)

    def defaults(self, quick: bool) -> dict[str, Any]:
        # the same arms and checks on one seed each and a shorter budget (grokking at this size comes after
        # about 700–1000 steps; the no-decay arm is judged on the shorter budget)
        return {"seeds": 1, "steps": 1200} if quick else {}

    def plan(self, config: Config) -> list:
        return []

    def problem(self, config: Config) -> Dataset:
        return load_dataset(config.data())

    def solve(self, config: Config, problem: Dataset, progress: ProgressBar) -> Solved:
        return Solved(train_arms(config, problem, progress), {})

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None = None) -> Analysis:
        return analysis.analyze(config, runs, metrics)

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None, directory: Path) -> list[Path]:
        return figures.draw_all(config, runs, metrics, directory)


STUDY = Grokking()
