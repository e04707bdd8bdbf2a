"""inductive-bias: a CNN's advantage on MNIST-1D comes from locality, which shuffling destroys.

Greydanus & Kobak 2024, "Scaling down deep learning with MNIST-1D" (ICML; Table 1 and Fig. 2),
after the shuffled-pixels experiment of Zhang et al. 2017, "Understanding deep learning requires
rethinking generalization".

Claim checked: trained the same way (SGD with momentum, cosine schedule, no explicit
regularization, to interpolation), the MNIST-1D paper's 1-D CNN tests far better than an MLP on
MNIST-1D (paper: 94% vs 68%) because its architecture prefers local, translation-equivariant
solutions. Shuffling the 40 input positions with one fixed permutation (train and test alike)
destroys locality but not information: the CNN's advantage disappears (paper: 56% vs 68%), while
the MLP is unaffected (paper: 68% on both). The MLP's first layer is a dense matrix ``W``; SGD from
``W`` on permuted inputs follows exactly the trajectory of SGD from ``W P`` on the original inputs
(the first-layer gradient permutes along), and PyTorch's i.i.d. initialization makes ``W P`` and
``W`` equal in distribution. So the MLP's accuracy on the two variants is equal in distribution
over seeds: any measured difference is seed noise.

Checks (thresholds from the paper's claim, not from runs of this code):

1. CNN advantage on original inputs: CNN test accuracy − MLP test accuracy ≥ 0.15 (paper: 0.26).
2. The advantage disappears when shuffled: CNN − MLP on shuffled inputs ≤ 0.05 (paper: −0.12).
3. The MLP is unaffected: |MLP original − MLP shuffled| ≤ max(0.02, 3 × the seed standard error of
   that difference) (paper: 0.00).

Runs are matched: the same seeds (initialization and batch order) for both data variants.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from implicitreg.config import CNNConfig, DataConfig, MLPConfig, Strict, TrainConfig
from implicitreg.plan import Group, Member, group_runs
from implicitreg.report import figures as fig
from implicitreg.report.figures import save_figure, subplots
from implicitreg.studies.base import (Analysis, Check, Support, final_values, mean_std, n_classes, seed_summary,
                                     weakest, with_model)

MODELS = ("mlp", "cnn")
VARIANTS = ("original", "shuffled")
# Greydanus & Kobak (2024), Table 1: test accuracy on MNIST-1D (Adam, 6000 steps, 3 runs; every model but
# logistic regression reaches 100% train accuracy).
ANCHORS = {("mlp", "original"): 0.68, ("mlp", "shuffled"): 0.68, ("cnn", "original"): 0.94,
           ("cnn", "shuffled"): 0.56}
CNN_ADVANTAGE_MIN = 0.15  # paper: 0.94 − 0.68 = 0.26; "far better" = more than half of that
SHUFFLED_ADVANTAGE_MAX = 0.05  # paper: 0.56 − 0.68 = −0.12; "disappears" = no more than 5 points left
MLP_CHANGE_MAX = 0.02  # paper: 0.68 − 0.68 = 0; equal in distribution, so only seed noise remains
NOISE_SE = 3.0  # ... and a difference within 3 standard errors of seed noise cannot refute equality
TABLE_METRICS = ("train_acc", "test_acc", "gap", "l2_norm", "dist_init")
SPATIAL_DATA = ("mnist1d", "digits")  # data sets with positions to shuffle; the synthetic ones have none
CHECK_ORIGINAL = "CNN − MLP test accuracy, original inputs"
CHECK_SHUFFLED = "CNN − MLP test accuracy, shuffled inputs"
CHECK_MLP = "MLP |original − shuffled| test accuracy"


class Config(Strict):
    """Configuration of ``inductive-bias``; every field can be set with ``--set``."""

    data: DataConfig = Field(default_factory=DataConfig)
    models: list[Literal["mlp", "cnn"]] = Field(default_factory=lambda: list(MODELS), min_length=1)
    variants: list[Literal["original", "shuffled"]] = Field(
        default_factory=lambda: list(VARIANTS), min_length=1,
        description="input variants (data.inputs of each data group); shuffled: one fixed permutation of positions")
    mlp: MLPConfig = Field(default_factory=lambda: MLPConfig(hidden=[256, 256]))
    # The paper's CNN (25 channels, 5k parameters): this study has no random labels to fit, so the
    # 64 channels explicit-vs-implicit needs for them are unnecessary, and the anchors are the 25-channel CNN's.
    cnn: CNNConfig = Field(default_factory=lambda: CNNConfig(channels=25))
    seeds: int = Field(5, ge=1, description="seeds per model and variant (the same seeds in every variant)")
    # explicit-vs-implicit's training, with the paper's 6000 steps as the budget: the shuffled CNN needs
    # ~3000 steps to interpolate (one seed in five took longer than 4000), the others stop before 2000.
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(
        optimizer="momentum", lr=0.05, momentum=0.9, batch_size=128, max_steps=6000, eval_every=250,
        target_train_acc=1.0, schedule="cosine"))

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        for name in ("models", "variants"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} must not repeat, got {values}")
        if self.data.name not in SPATIAL_DATA:
            raise ValueError(f"data: inductive-bias needs inputs with spatial positions ({', '.join(SPATIAL_DATA)}), "
                             f"got {self.data.name}")
        if self.data.inputs != "original":
            raise ValueError(f"data.inputs: set per data group by `variants` ({list(VARIANTS)}); leave it "
                             f"'original', got {self.data.inputs!r}")
        return self


class InductiveBias:
    name = "inductive-bias"
    claim = ("A CNN beats an MLP on MNIST-1D by its locality prior: shuffling the input positions removes the "
             "CNN's advantage and leaves the MLP unchanged.")
    paper = "Greydanus & Kobak 2024; Zhang et al. 2017"
    Config = Config
    minutes = (1.0, 2.2)  # quick, full: on 2 CPU cores

    def defaults(self, quick: bool) -> dict[str, Any]:
        if not quick:
            return {}
        # the same checks on 4 seeds and a shorter budget (the shuffled CNN, the slowest to fit, stops short of
        # 100% train accuracy at 2500 steps but its test accuracy has settled). Not 2 seeds: the MLP check's
        # tolerance rests on the seed standard error, which 2 seeds per variant barely estimate (a quick run
        # with 2 seeds failed it at 0.024 > 0.02 with an SE of 0.005).
        return {"seeds": 4, "train": {"max_steps": 2500, "eval_every": 250}}

    def plan(self, config: Config) -> list[Group]:
        runs = []
        for model in config.models:
            model_config = config.mlp if model == "mlp" else config.cnn
            for variant in config.variants:
                data = DataConfig.model_validate({**config.data.model_dump(), "inputs": variant})
                for seed in range(config.seeds):
                    member = Member(f"{model}/{variant}/seed{seed}", seed=seed, lr=config.train.lr,
                                    init_scale=model_config.init_scale, arm=variant, tags={"model": model})
                    runs.append((model, model_config, data, config.train, member))
        return group_runs(runs)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame) -> Analysis:
        final = _final(runs, metrics)
        rows = []
        for model in config.models:
            for variant in config.variants:
                part = final[(final["model"] == model) & (final["arm"] == variant)]
                if part.empty:
                    continue
                anchor = ANCHORS.get((model, variant)) if config.data.name == "mnist1d" else None
                rows.append({"model": model, "variant": variant,
                             "paper_test": "–" if anchor is None else f"{100 * anchor:.0f}%",
                             **seed_summary(part, list(TABLE_METRICS), config.seeds)})
        table = pd.DataFrame(rows)
        stats = _test_stats(final)
        checks = _checks(stats, config.seeds)
        return Analysis(table, checks, _notes(config, stats))

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame, directory: Path) -> list[Path]:
        labelled = metrics.merge(with_model(runs, runs)[["run_id", "model", "arm"]], on="run_id")
        final = _final(runs, metrics)
        order = {"model": list(config.models), "arm": list(config.variants)}
        chance = (1.0 / n_classes(config.data), "chance")
        anchors = ANCHORS if config.data.name == "mnist1d" else {}
        paths = [accuracy_bars(final, list(config.models), list(config.variants), anchors, chance[0],
                               directory / "accuracy_by_variant.png")]
        tracked = tuple((name, name.replace("_", " ")) for name in config.train.track)
        for name, title in (("test_acc", "test accuracy"), ("train_acc", "train accuracy"),
                            ("l2_norm", "parameter ℓ2 norm"), *tracked):
            paths.append(fig.curves(labelled, name, panel="model", line="arm", title=f"{title} along training",
                                    path=directory / f"curves_{name}.png", order=order,
                                    reference=chance if name.endswith("acc") else None))
        paths.append(fig.bars(final, ["gap", "l2_norm", "dist_init"], panel="model", bar="arm",
                              path=directory / "by_variant.png", title="final values by variant (mean ± std over seeds)"))
        return paths


def _final(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run with its last evaluation; metric columns are NaN for a run never evaluated."""
    return with_model(final_values(runs, metrics), runs).reindex(
        columns=[*runs.columns.drop(["config", "provenance"]), "model", *TABLE_METRICS])


def _test_stats(final: pd.DataFrame) -> dict[tuple[str, str], tuple[float, float, int]]:
    """(model, variant) → (mean, sample std, count) of final test accuracy over finite values."""
    stats = {}
    for (model, variant), part in final.groupby(["model", "arm"]):
        values = pd.to_numeric(part["test_acc"], errors="coerce").astype(float)
        values = values[np.isfinite(values)]
        if not values.empty:
            stats[(model, variant)] = (*mean_std(values), len(values))
    return stats


def _checks(stats: dict[tuple[str, str], tuple[float, float, int]], seeds: int) -> list[Check]:
    """The three checks from the per-cell test-accuracy statistics; each says how many of the
    ``seeds`` planned per cell it rests on (inconclusive under half)."""
    def mean(model: str, variant: str) -> float | None:
        return stats[(model, variant)][0] if (model, variant) in stats else None

    def difference(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    def support(*cells: tuple[str, str]) -> Support | None:
        return weakest(*(Support(stats[c][2] if c in stats else 0, seeds, "seeds") for c in cells))

    def paper(a: tuple[str, str], b: tuple[str, str]) -> str:
        return f"MNIST-1D paper: {ANCHORS[a]:.2f} − {ANCHORS[b]:.2f} = {ANCHORS[a] - ANCHORS[b]:+.2f}"

    def detail(a: tuple[str, str], b: tuple[str, str]) -> str:
        if mean(*a) is None or mean(*b) is None:
            return paper(a, b)
        return f"{'/'.join(a)} {mean(*a):.4f}, {'/'.join(b)} {mean(*b):.4f}; {paper(a, b)}"

    original = difference(mean("cnn", "original"), mean("mlp", "original"))
    shuffled = difference(mean("cnn", "shuffled"), mean("mlp", "shuffled"))
    cnn_drop = difference(mean("cnn", "original"), mean("cnn", "shuffled"))
    mlp_change = difference(mean("mlp", "original"), mean("mlp", "shuffled"))
    mlp_change = None if mlp_change is None else abs(mlp_change)
    mlp_counts = [stats[("mlp", v)][2] for v in VARIANTS if ("mlp", v) in stats]
    if len(mlp_counts) == 2 and min(mlp_counts) >= 2:
        (_, s1, n1), (_, s2, n2) = stats[("mlp", "original")], stats[("mlp", "shuffled")]
        se = math.sqrt(s1 ** 2 / n1 + s2 ** 2 / n2)  # of the difference of two independent means
        tolerance = max(MLP_CHANGE_MAX, NOISE_SE * se)
        why = f"tolerance max({MLP_CHANGE_MAX}, {NOISE_SE:g} × SE {se:.4f})"
    else:  # one seed per variant estimates no seed noise
        tolerance, why = MLP_CHANGE_MAX, f"tolerance {MLP_CHANGE_MAX} (no seed SE with < 2 seeds per variant)"

    drop = "" if cnn_drop is None else f"; the CNN loses {cnn_drop:.4f} when shuffled (paper: 0.38)"
    cells = {variant: (("cnn", variant), ("mlp", variant)) for variant in VARIANTS}
    return [
        Check.at_least(CHECK_ORIGINAL, original, CNN_ADVANTAGE_MIN, detail=detail(*cells["original"]),
                       support=support(*cells["original"])),
        Check.at_most(CHECK_SHUFFLED, shuffled, SHUFFLED_ADVANTAGE_MAX, detail=detail(*cells["shuffled"]) + drop,
                      support=support(*cells["shuffled"])),
        Check.at_most(CHECK_MLP, mlp_change, tolerance,
                      detail=f"{why}; {detail(('mlp', 'original'), ('mlp', 'shuffled'))}",
                      support=support(("mlp", "original"), ("mlp", "shuffled"))),
    ]


def _notes(config: Config, stats: dict[tuple[str, str], tuple[float, float, int]]) -> list[str]:
    notes = [(f"chance accuracy = 1/{n_classes(config.data)}; means over seeds; steps = steps until train accuracy "
              f"{config.train.target_train_acc} or the budget ({config.train.max_steps}); shuffled = one fixed "
              f"permutation of the input positions (data seed {config.data.seed}), the same for train and test.")]
    if config.data.name == "mnist1d":
        measured = ", ".join(
            f"{model}/{variant} {100 * stats[(model, variant)][0]:.1f}% (paper {100 * ANCHORS[(model, variant)]:.0f}%)"
            for model in config.models for variant in config.variants if (model, variant) in stats)
        notes.append("test accuracy against the anchors of Greydanus & Kobak (2024), Table 1 (Adam, 6000 steps): "
                     + (measured or "nothing measured"))
    else:
        notes.append(f"data {config.data.name}: the paper's anchors are for MNIST-1D and are not shown.")
    notes.append("MLP check: SGD on permuted inputs from first-layer weights W equals SGD on the original inputs "
                 "from W·P, and W·P is distributed as W, so the two MLP accuracies are equal in distribution; the "
                 f"tolerance is the larger of {MLP_CHANGE_MAX} and {NOISE_SE:g} standard errors of the difference "
                 "of the two seed means.")
    return notes


def accuracy_bars(final: pd.DataFrame, models: list[str], variants: list[str],
                  anchors: dict[tuple[str, str], float], chance: float, path: Path) -> Path:
    """Test and train accuracy (%) by model (groups) and variant (bars), mean ± std over seeds; the
    paper's test accuracies drawn as black markers."""
    figure, axes = subplots(1, 2, figsize=(10, 3.8), squeeze=False)
    width = 0.8 / max(1, len(variants))
    for ax, name in zip(axes[0], ("test_acc", "train_acc")):
        for i, variant in enumerate(variants):
            stats = [mean_std(final.loc[(final["model"] == m) & (final["arm"] == variant), name]) for m in models]
            x = np.arange(len(models)) + (i - (len(variants) - 1) / 2) * width
            ax.bar(x, [100 * s[0] for s in stats], width,
                   yerr=[0 if math.isnan(s[1]) else 100 * s[1] for s in stats],
                   capsize=3, color=f"C{i}", label=variant)
            if name == "test_acc":
                marks = [100 * anchors.get((m, variant), math.nan) for m in models]
                ax.plot(x, marks, linestyle="none", marker="D", color="black", markersize=5,
                        label="paper" if i == 0 and anchors else None)
        ax.axhline(100 * chance, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_xticks(range(len(models)), models)
        ax.set_ylim(0, 105)
        ax.set_ylabel(fig.axis_label(name))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    figure.suptitle("accuracy by model and input variant (mean ± std over seeds; ◆ MNIST-1D paper)")
    return save_figure(figure, path)


STUDY = InductiveBias()
