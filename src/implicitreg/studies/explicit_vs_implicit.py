"""explicit-vs-implicit: networks trained with no explicit regularization still generalize.

Zhang, Bengio, Hardt, Recht & Vinyals (2017), "Understanding deep learning requires rethinking
generalization"; Neyshabur, Tomioka & Srebro (2015), "In search of the real inductive bias".

Claim checked: an overparameterized MLP and CNN trained by SGD (momentum) with no explicit
regularization fit MNIST-1D (train accuracy ≥ 99%) and test within 5 points of their best
explicitly regularized twin (weight decay, dropout, both) — while the very same networks fit
random labels (train accuracy ≥ 95%) with test accuracy within 3 points of chance. Arms are
matched: the same seeds give the same initializations and the same batch order in every arm.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field, model_validator

from implicitreg.config import CNNConfig, DataConfig, MLPConfig, Strict, TrainConfig
from implicitreg.plan import Group, Member, group_runs
from implicitreg.report import figures as fig
from implicitreg.studies.base import Analysis, Check, Support, final_values, mean_std, n_classes, weakest, with_model

ARMS = ("none", "wd", "dropout", "wd+dropout", "random_labels")  # wd: weight decay
EXPLICIT = ("wd", "dropout", "wd+dropout")
TRAIN_ACC_MIN = 0.99  # unregularized arm interpolates
TEST_GAP_MAX = 0.05  # ... and tests within 5 points of the best explicit arm
RANDOM_TRAIN_MIN = 0.95  # random labels are fitted
CHANCE_TOLERANCE = 0.03  # ... and test at chance
TABLE_METRICS = ("train_acc", "test_acc", "gap", "l2_norm", "dist_init")


class Config(Strict):
    """Configuration of ``explicit-vs-implicit``; every field can be set with ``--set``."""

    data: DataConfig = Field(default_factory=DataConfig)
    models: list[Literal["mlp", "cnn"]] = Field(default_factory=lambda: ["mlp", "cnn"], min_length=1)
    mlp: MLPConfig = Field(default_factory=lambda: MLPConfig(hidden=[256, 256]))
    # 64 channels (28k parameters) rather than the MNIST-1D paper's 25 (5k): the claim needs a CNN
    # that can fit 4000 random labels, i.e. an overparameterized one.
    cnn: CNNConfig = Field(default_factory=lambda: CNNConfig(channels=64))
    seeds: int = Field(5, ge=1, description="seeds per arm (the same seeds in every arm)")
    weight_decay: float = Field(5e-4, gt=0.0, description="λ of the weight-decay arms (coupled L2)")
    dropout: float = Field(0.5, gt=0.0, lt=1.0, description="dropout rate of the dropout arms")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(
        optimizer="momentum", lr=0.05, momentum=0.9, batch_size=128, max_steps=4000, eval_every=250,
        target_train_acc=1.0, schedule="cosine"))

    @model_validator(mode="after")
    def _unique_models(self) -> "Config":
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models must not repeat, got {self.models}")
        if self.data.name in ("regression",):
            raise ValueError("data: explicit-vs-implicit needs a classification data set, got regression")
        return self


class ExplicitVsImplicit:
    name = "explicit-vs-implicit"
    claim = ("Without weight decay or dropout, SGD-trained networks fit the data and test within 5 points of "
             "their regularized twins, though the same networks fit random labels.")
    paper = "Zhang et al. 2017; Neyshabur, Tomioka & Srebro 2015"
    minutes = (1.5, 7.6)  # quick, full: on 2 CPU cores
    Config = Config

    def defaults(self, quick: bool) -> dict[str, Any]:
        if not quick:
            return {}
        # the claim at half the data: 2000 points are fitted (random labels too) well within the budget
        return {"seeds": 2, "data": {"n_train": 2000, "n_test": 1000}, "train": {"max_steps": 2000, "eval_every": 250}}

    def plan(self, config: Config) -> list[Group]:
        hyper = {
            "none": (0.0, 0.0, 0.0),
            "wd": (config.weight_decay, 0.0, 0.0),
            "dropout": (0.0, config.dropout, 0.0),
            "wd+dropout": (config.weight_decay, config.dropout, 0.0),
            "random_labels": (0.0, 0.0, 1.0),
        }
        runs = []
        for model in config.models:
            model_config = config.mlp if model == "mlp" else config.cnn
            for arm in ARMS:
                wd, dropout, noise = hyper[arm]
                for seed in range(config.seeds):
                    member = Member(f"{model}/{arm}/seed{seed}", seed=seed, lr=config.train.lr, weight_decay=wd,
                                    dropout=dropout, label_noise=noise, init_scale=model_config.init_scale,
                                    arm=arm, tags={"model": model})
                    runs.append((model, model_config, config.data, config.train, member))
        return group_runs(runs)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame) -> Analysis:
        final = with_model(final_values(runs, metrics)).reindex(
            columns=[*runs.columns.drop(["config", "provenance"]), "model", *TABLE_METRICS])  # NaN if never evaluated
        rows = []
        for (model, arm), part in final.groupby(["model", "arm"], sort=False):
            row: dict[str, Any] = {"model": model, "arm": arm, "runs": len(part),
                                   "diverged": int((part["status"] == "diverged").sum()),
                                   "reached_target": f"{int(part['target_step'].notna().sum())}/{config.seeds}"}
            for name in TABLE_METRICS:
                row[f"{name}_mean"], row[f"{name}_std"] = mean_std(part[name])
            row["steps_mean"], row["steps_std"] = mean_std(part["final_step"].astype(float))
            rows.append(row)
        table = pd.DataFrame(rows, columns=None if rows else ["model", "arm"])
        chance = 1.0 / n_classes(config.data)
        checks = []
        for model in config.models:
            checks.extend(_model_checks(table[table["model"] == model].set_index("arm"),
                                        final[final["model"] == model], model, chance, config.seeds))
        notes = [f"chance accuracy = 1/{n_classes(config.data)} = {chance:.3f}; means over seeds; "
                 f"steps = steps until train accuracy {config.train.target_train_acc} or the budget "
                 f"({config.train.max_steps})."]
        return Analysis(table, checks, notes)

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame, directory: Path) -> list[Path]:
        labelled = metrics.merge(with_model(runs)[["run_id", "model", "arm"]], on="run_id")
        final = with_model(final_values(runs, metrics))
        order = {"model": list(config.models), "arm": list(ARMS)}
        chance = (1.0 / n_classes(config.data), "chance")
        paths = []
        tracked = tuple((name, name.replace("_", " ")) for name in config.train.track)
        for name, title in (("test_acc", "test accuracy"), ("train_acc", "train accuracy"),
                            ("l2_norm", "parameter ℓ2 norm"), ("dist_init", "distance from initialization"),
                            *tracked):
            paths.append(fig.curves(labelled, name, panel="model", line="arm", title=f"{title} along training",
                                    path=directory / f"curves_{name}.png", order=order,
                                    reference=chance if name.endswith("acc") else None))
        paths.append(fig.bars(final, ["test_acc", "gap", "l2_norm", "dist_init"], panel="model", bar="arm",
                              path=directory / "by_arm.png", title="final values by arm (mean ± std over seeds)"))
        return paths


def _model_checks(table: pd.DataFrame, final: pd.DataFrame, model: str, chance: float, seeds: int) -> list[Check]:
    """The four checks of one model family, from the per-arm means (``table``, indexed by arm) and
    the per-run values they average (``final``: how many seeds each rests on)."""
    def value(arm: str, column: str) -> float | None:
        return float(table.loc[arm, column]) if arm in table.index else None

    def support(arm: str, column: str) -> Support:
        return Support.of(final.loc[final["arm"] == arm, column], seeds, "seeds")

    none_test = value("none", "test_acc_mean")
    # the best explicit arm is chosen among arms with enough seeds: an arm that lost its runs must
    # not be ruled out of "best" (the check is then inconclusive, through its support)
    explicit = {arm: value(arm, "test_acc_mean") for arm in EXPLICIT}
    judged = {arm: v for arm, v in explicit.items() if v is not None and math.isfinite(v)}
    best_arm = max(judged, key=judged.get) if len(judged) == len(EXPLICIT) else None
    shortfall = None if best_arm is None or none_test is None else judged[best_arm] - none_test
    random_test = value("random_labels", "test_acc_mean")
    lost = [arm for arm in EXPLICIT if arm not in judged]
    return [
        Check.at_least(f"{model}: unregularized train accuracy", value("none", "train_acc_mean"), TRAIN_ACC_MIN,
                       support=support("none", "train_acc")),
        Check.at_most(f"{model}: best explicit test accuracy minus unregularized", shortfall, TEST_GAP_MAX,
                      detail=(f"no test accuracy for the explicit arm(s) {', '.join(lost)}" if lost else
                              f"best explicit arm {best_arm}: {judged[best_arm]:.4f}; unregularized: {none_test:.4f}"
                              if shortfall is not None else ""),
                      support=weakest(support("none", "test_acc"), *(support(arm, "test_acc") for arm in EXPLICIT))),
        Check.at_least(f"{model}: random-label train accuracy", value("random_labels", "train_acc_mean"),
                       RANDOM_TRAIN_MIN, support=support("random_labels", "train_acc")),
        Check.at_most(f"{model}: random-label test accuracy distance from chance",
                      None if random_test is None else abs(random_test - chance), CHANCE_TOLERANCE,
                      detail="" if random_test is None else f"test accuracy {random_test:.4f}, chance {chance:.3f}",
                      support=support("random_labels", "test_acc")),
    ]


STUDY = ExplicitVsImplicit()
