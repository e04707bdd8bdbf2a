"""random-labels: networks fit corrupted labels and random inputs; corruption only costs time and test accuracy.

Zhang, Bengio, Hardt, Recht & Vinyals (2017), "Understanding deep learning requires rethinking
generalization".

Claim checked: an overparameterized MLP and CNN trained by SGD (momentum, cosine schedule) with no
explicit regularization fit MNIST-1D at every label-corruption level — a fraction p ∈ {0, 0.2, …,
1.0} of the training labels replaced by uniform random classes — and fit Gaussian random inputs with
clean labels (train accuracy ≥ 95%); test accuracy falls monotonically with p, within seed noise;
and the time to fit grows with p (Spearman ρ between p and the mean steps to fit ≥ 0.8). So the
capacity to memorize is there, and what a network generalizes from is decided by the data it gets,
not by a capacity limit. Which complexity measures (norms, distance from initialization, path norm,
spectral complexity, sharpness, PAC-Bayes flatness) grow with p is reported, not judged.

Design:
- Levels, models and seeds are matched: seed s gives the same initialization and batch order at
  every level; only the corrupted labels (drawn from the seed's own stream) differ.
- The random-inputs arm (``data.inputs="gaussian"``: every input replaced by Gaussian noise, labels
  clean) trains on different data, so it is a population of its own.
- Members stop when they fit (``train.target_train_acc=1.0``); the measures are tracked with a
  cadence of the whole budget, so the training loop takes them once, at each run's last step (its
  fit, or the budget). The steps to fit are read off the train-accuracy curve (the first
  evaluation with train accuracy ≥ ``fit_acc``; a run that never gets there counts as the budget).
"""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field, field_validator, model_validator

from implicitreg.config import CNNConfig, DataConfig, MLPConfig, Strict, TrainConfig
from implicitreg.plan import Group, Member, group_runs
from implicitreg.report import figures as fig
from implicitreg.evaluate import spearman
from implicitreg.studies.base import (Analysis, Check, Support, final_values, mean_std, n_classes, weakest,
                                     with_model)

RANDOM_INPUTS = "random_inputs"
LEVEL_PREFIX = "corrupt"
FIT_MIN = 0.95  # every level (and random inputs) is fitted: mean train accuracy
SE_MULTIPLIER = 2.0  # test accuracy may rise between consecutive levels by at most 2 standard errors
STEPS_RHO_MIN = 0.8  # Spearman ρ(level, mean steps to fit)
CHEAP = ["l2_norm", "distance_from_init", "path_norm", "spectral_complexity"]
EXPENSIVE = ["top_hessian_eigenvalue", "pac_bayes_sigma"]


def _known(names: list[str]) -> list[str]:
    from implicitreg.measures import REGISTRY

    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown measure(s) {unknown}; expected any of {sorted(REGISTRY)}")
    if len(set(names)) != len(names):
        raise ValueError(f"measures must not repeat, got {names}")
    return names


class Tracked(Strict):
    """Measures computed on each run's final weights, per model (names from ``implicitreg measures``).

    The Hessian and PAC-Bayes σ search run on all 4000 training points: about 5 s and 16 s per MLP
    member, 15 s and more per CNN member (1 CPU thread), which is why the CNN default omits them.
    """

    mlp: list[str] = Field(default_factory=lambda: [*CHEAP, *EXPENSIVE])
    cnn: list[str] = Field(default_factory=lambda: list(CHEAP))

    @field_validator("mlp", "cnn")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return _known(value)


class Config(Strict):
    """Configuration of ``random-labels``; every field can be set with ``--set``."""

    data: DataConfig = Field(default_factory=DataConfig)
    models: list[Literal["mlp", "cnn"]] = Field(default_factory=lambda: ["mlp", "cnn"], min_length=1)
    mlp: MLPConfig = Field(default_factory=lambda: MLPConfig(hidden=[256, 256]))
    cnn: CNNConfig = Field(default_factory=lambda: CNNConfig(channels=64))  # as explicit-vs-implicit
    levels: list[float] = Field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], min_length=2,
                                description="label-corruption fractions (increasing)")
    random_inputs: bool = Field(True, description="add the Gaussian-inputs arm (clean labels)")
    seeds: int = Field(3, ge=1, description="seeds per level (the same seeds at every level)")
    fit_acc: float = Field(1.0, gt=0.0, le=1.0, description="train accuracy that counts as fitted (steps to fit)")
    track: Tracked = Field(default_factory=Tracked)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(
        optimizer="momentum", lr=0.05, momentum=0.9, batch_size=128, max_steps=4000, eval_every=250,
        target_train_acc=1.0, schedule="cosine"))

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models must not repeat, got {self.models}")
        if any(not 0.0 <= p <= 1.0 for p in self.levels) or any(
                a >= b for a, b in pairwise(self.levels)):
            raise ValueError(f"levels must be strictly increasing fractions in [0, 1], got {self.levels}")
        if self.data.name not in ("mnist1d", "digits"):
            raise ValueError(f"data: random-labels needs a 10-class data set (mnist1d, digits), got {self.data.name}")
        if self.data.inputs != "original":
            raise ValueError("data.inputs: the random-inputs arm sets it; keep 'original' (or random_inputs=false)")
        if self.train.track:
            raise ValueError("train.track: set the measures with track.mlp / track.cnn (tracked at each run's end)")
        return self


def level_arm(level: float) -> str:
    return f"{LEVEL_PREFIX}{level:g}"


def arm_level(arm: str) -> float:
    """The corruption level of an arm name; NaN for the random-inputs arm."""
    return float(arm[len(LEVEL_PREFIX):]) if arm.startswith(LEVEL_PREFIX) else math.nan


class RandomLabels:
    name = "random-labels"
    claim = ("SGD-trained networks fit labels at every corruption level and random inputs; test accuracy falls "
             "and the time to fit grows with the corrupted fraction.")
    paper = "Zhang et al. 2017"
    Config = Config
    minutes = (1.2, 7.5)  # quick, full: on 2 CPU cores

    def defaults(self, quick: bool) -> dict[str, Any]:
        if not quick:
            return {}
        # the same checks at half the data (2000 of MNIST-1D's 4000 training points, which every level and
        # the random inputs fit well within 2000 steps), fewer seeds and levels; evaluations every 50 steps
        # so that the steps to fit of the three levels are told apart (every 125 tied two of them)
        return {"seeds": 2, "levels": [0.0, 0.5, 1.0], "data": {"n_train": 2000, "n_test": 1000},
                "train": {"max_steps": 2000, "eval_every": 50},
                "track": {"mlp": [*CHEAP, "top_hessian_eigenvalue"], "cnn": list(CHEAP)}}

    def plan(self, config: Config) -> list[Group]:
        runs = []
        for model in config.models:
            model_config = config.mlp if model == "mlp" else config.cnn
            names = getattr(config.track, model)
            # a cadence of the whole budget: the loop takes them once, at each run's own last step
            every = config.train.max_steps
            train = config.train.model_copy(update={"track": names, "track_every": every,
                                                    "track_expensive_every": every})
            arms = [(level_arm(p), p, config.data) for p in config.levels]
            if config.random_inputs:
                arms.append((RANDOM_INPUTS, 0.0, config.data.model_copy(update={"inputs": "gaussian"})))
            for arm, noise, data in arms:
                for seed in range(config.seeds):
                    member = Member(f"{model}/{arm}/seed{seed}", seed=seed, lr=config.train.lr, label_noise=noise,
                                    init_scale=model_config.init_scale, arm=arm, tags={"model": model})
                    runs.append((model, model_config, data, train, member))
        return group_runs(runs)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame) -> Analysis:
        final = _finals(config, runs, metrics)
        measures = _measures(config)
        rows = []
        for (model, arm), part in final.groupby(["model", "arm"], sort=False):
            row: dict[str, Any] = {"model": model, "arm": arm, "level": arm_level(arm), "runs": len(part),
                                   "diverged": int((part["status"] == "diverged").sum()),
                                   "fitted": f"{int(part['fit_step'].notna().sum())}/{len(part)}"}
            for name in ("train_acc", "test_acc", "steps", *measures):
                row[f"{name}_mean"], row[f"{name}_std"] = mean_std(part[name])
            rows.append(row)
        order = {arm: i for i, arm in enumerate([*map(level_arm, config.levels), RANDOM_INPUTS])}
        table = pd.DataFrame(rows)
        if not table.empty:
            table = table.sort_values(["model", "arm"], key=lambda s: s.map(
                {m: i for i, m in enumerate(config.models)} if s.name == "model" else order)).reset_index(drop=True)
        checks, notes = [], []
        for model in config.models:
            part = table[table["model"] == model] if not table.empty else table
            model_checks, model_notes = _model_checks(config, part, final[final["model"] == model], model,
                                                      getattr(config.track, model))
            checks.extend(model_checks)
            notes.extend(model_notes)
        notes.insert(0, f"chance accuracy = 1/{n_classes(config.data)}; means ± std over seeds; steps = first evaluation "
                        f"(every {config.train.eval_every}) with train accuracy ≥ {config.fit_acc}, or the budget "
                        f"({config.train.max_steps}) for runs that never got there; measures at each run's last step.")
        return Analysis(table, checks, notes)

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame, directory: Path) -> list[Path]:
        final = _finals(config, runs, metrics)
        labelled = metrics.merge(with_model(runs, runs)[["run_id", "model", "arm"]], on="run_id")
        arms = [*map(level_arm, config.levels), *([RANDOM_INPUTS] if config.random_inputs else [])]
        order = {"model": list(config.models), "arm": arms}
        chance = (1.0 / n_classes(config.data), "chance")
        paths = [
            _vs_level(config, final, ["train_acc", "test_acc"], directory / "accuracy_vs_level.png",
                      "accuracy vs label corruption (mean ± std over seeds)", reference=chance),
            _vs_level(config, final, ["steps"], directory / "steps_vs_level.png",
                      f"steps to train accuracy ≥ {config.fit_acc} (budget {config.train.max_steps})"),
        ]
        for name in _measures(config):
            paths.append(_vs_level(config, final, [name], directory / f"{name}_vs_level.png",
                                   f"{name.replace('_', ' ')} at the end of training"))
        for name, title in (("train_acc", "train accuracy"), ("test_acc", "test accuracy"),
                            ("train_loss", "train loss")):
            if name in set(labelled["name"]):
                paths.append(fig.curves(labelled, name, panel="model", line="arm", title=f"{title} along training",
                                        path=directory / f"curves_{name}.png", order=order,
                                        reference=chance if name.endswith("acc") else None))
        return paths


def _measures(config: Config) -> list[str]:
    """Tracked measures of the models that ran, in first-seen order."""
    return list(dict.fromkeys(n for model in config.models for n in getattr(config.track, model)))


def _finals(config: Config, runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run: final metrics, level, the step it first fitted (NaN if never) and its steps to fit."""
    names = ["train_acc", "test_acc", *_measures(config)]
    final = with_model(final_values(runs, metrics), runs)
    final = final.reindex(columns=list(dict.fromkeys([*final.columns, *names])))  # NaN if never recorded
    acc = metrics[metrics["name"] == "train_acc"]
    fitted = acc[acc["value"] >= config.fit_acc].groupby("run_id")["step"].min()
    final["fit_step"] = final["run_id"].map(fitted)
    if "target_step" in final:  # members that stopped on the target fitted there
        final["fit_step"] = final["fit_step"].fillna(pd.to_numeric(final["target_step"], errors="coerce"))
    final["steps"] = final["fit_step"].fillna(config.train.max_steps).astype(float)
    final.loc[final["train_acc"].isna(), "steps"] = math.nan  # never evaluated: unknown, not slow
    final["level"] = final["arm"].map(arm_level)
    return final


def _model_checks(config: Config, table: pd.DataFrame, final: pd.DataFrame, model: str,
                  measures: list[str]) -> tuple[list[Check], list[str]]:
    """The four checks of one model from its per-arm means (``table``) and the per-run values they
    average (``final``: how many of the ``config.seeds`` planned per arm each rests on)."""
    arms = [level_arm(p) for p in config.levels]
    by_arm = table.set_index("arm") if not table.empty else pd.DataFrame()

    def value(arm: str, column: str) -> float | None:
        if arm not in by_arm.index or pd.isna(by_arm.loc[arm, column]):
            return None
        return float(by_arm.loc[arm, column])

    def support(arm: str, column: str) -> Support:
        return Support.of(final.loc[final["arm"] == arm, column], config.seeds, "seeds")

    def over_levels(column: str) -> Support | None:
        return weakest(*(support(arm, column) for arm in arms))

    def missing(column: str) -> str:
        lost = [arm for arm in arms if value(arm, f"{column}_mean") is None]
        return f"no {column} at {', '.join(lost)}" if lost else ""

    # (1) every level is fitted: the worst level's mean train accuracy
    train = {arm: value(arm, "train_acc_mean") for arm in arms}
    worst = None if missing("train_acc") else min(train, key=train.get)
    checks = [Check.at_least(f"{model}: min over levels of mean train accuracy",
                             None if worst is None else train[worst], FIT_MIN,
                             detail=missing("train_acc") or f"lowest at {worst}", support=over_levels("train_acc"))]

    # (2) test accuracy falls: mean(higher) − mean(lower) − 2·SE of the difference, worst pair; the SE
    # over the seeds that have a test accuracy (one seed: no spread, so the rise itself counts)
    rises = []
    if not missing("test_acc"):
        for low, high in pairwise(arms):
            (m0, s0, n0), (m1, s1, n1) = ((value(a, "test_acc_mean"), value(a, "test_acc_std") or 0.0,
                                           support(a, "test_acc").used) for a in (low, high))
            se = math.sqrt(s0 ** 2 / n0 + s1 ** 2 / n1)
            rises.append((m1 - m0 - SE_MULTIPLIER * se, f"{low}→{high}: {m0:.4f}→{m1:.4f}, SE {se:.4f}"))
    worst_rise = max(rises) if rises else None
    checks.append(Check.at_most(f"{model}: test-accuracy rise between consecutive levels beyond 2 SE (worst pair)",
                                None if worst_rise is None else worst_rise[0], 0.0,
                                detail=missing("test_acc") or worst_rise[1], support=over_levels("test_acc")))

    # (3) the time to fit grows: Spearman ρ between level and mean steps to fit
    levels = pd.Series([arm_level(a) for a in arms])
    steps = pd.Series([value(a, "steps_mean") for a in arms], dtype=float)
    rho = None if steps.isna().any() else spearman(levels, steps)
    shown = "steps: " + ", ".join(f"{p:g}→{s:.0f}" for p, s in zip(levels, steps) if pd.notna(s))
    checks.append(Check.at_least(f"{model}: Spearman ρ(level, mean steps to fit)", rho, STEPS_RHO_MIN,
                                 detail="; ".join(filter(None, [missing("steps"), shown])),
                                 support=over_levels("steps")))

    # (4) random inputs are fitted too
    if config.random_inputs:
        checks.append(Check.at_least(f"{model}: random-inputs mean train accuracy",
                                     value(RANDOM_INPUTS, "train_acc_mean"), FIT_MIN,
                                     support=support(RANDOM_INPUTS, "train_acc")))

    notes = []
    rhos = {name: spearman(levels, pd.Series([value(a, f"{name}_mean") for a in arms], dtype=float))
            for name in measures if f"{name}_mean" in by_arm.columns}
    if rhos:
        shown = ", ".join(f"{n} {'n/a' if r is None else f'{r:+.2f}'}" for n, r in rhos.items())
        grows = [n for n, r in rhos.items() if r is not None and r >= STEPS_RHO_MIN]
        notes.append(f"{model}: Spearman ρ(level, mean measure): {shown}; growing with corruption "
                     f"(ρ ≥ {STEPS_RHO_MIN}): {', '.join(grows) or 'none'}.")
    return checks, notes


def _vs_level(config: Config, final: pd.DataFrame, names: list[str], path: Path, title: str,
              reference: tuple[float, str] | None = None) -> Path:
    """One panel per model: mean ± std over seeds of each metric against the corruption level; the
    random-inputs arm as a square to the right. Accuracies in %, and so is a ``reference`` (chance)."""
    accuracy = all(n in ("train_acc", "test_acc") for n in names)
    return fig.versus(final, "level", names, path, xlabel="fraction of labels corrupted", title=title, panel="model",
                      order=list(config.models), ylabel="accuracy (%)" if accuracy else None if len(names) == 1 else "",
                      reference_line=reference,
                      aside=(max(config.levels) + 0.2, "random\ninputs") if config.random_inputs else None)


STUDY = RandomLabels()
