"""measure-ranking: which complexity measure predicts generalization across a sweep of networks.

Jiang, Neyshabur, Mobahi, Krishnan & Bengio (2020), "Fantastic generalization measures and where
to find them" (ICLR).

What is checked: a sweep of MLPs on MNIST-1D over width, depth, learning rate, batch size, weight
decay, dropout and seeds, each trained to the same train cross-entropy (Jiang et al.'s 0.01);
every measure of the library that applies to an MLP is computed at that point, and each is scored
by Kendall's τ and the granulated τ (Ψ) between it and the generalization gap. The claim —
flatness measures predict the gap better than norm products — is checked as the difference
D = mean Ψ of the flatness and sharpness families − mean Ψ of the norm-product family (the
registry's ``family``), with a bootstrap 95% interval over models (each resample recomputes every
Ψ): pass when the interval lies above 0, fail when it lies below, inconclusive when it straddles
0. Two checks guard it: enough models reached the loss target, and every measure has a defined τ.

Orientation: τ is computed for (sign · measure, gap) with sign = +1 where a lower value means a
simpler model and −1 where a higher value does (margins, σ), so a positive τ always means "ranks
models as the theory behind the measure says".
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from implicitreg.config import DataConfig, MLPConfig, Strict, TrainConfig
from implicitreg.evaluate import granulated_kendall_tau, granulated_psi, group_codes, kendall_tau
from implicitreg.measures import REGISTRY
from implicitreg.plan import Group, Member, group_runs
from implicitreg.report.figures import save_figure, subplots
from implicitreg.studies.base import Analysis, Check, Support, final_values, weakest

#: Measures of the end-to-end matrix of a linear (factorized) model: undefined for a ReLU MLP.
LINEAR_ONLY = ("effective_rank", "nuclear_norm", "stable_rank")
#: What --set measures=[…] may name: every registered measure defined for a ReLU MLP.
APPLICABLE = tuple(sorted(name for name in REGISTRY if name not in LINEAR_ONLY))
#: The default ranking: the norm, margin, flatness and sharpness measures of Jiang et al. (2020), a
#: fixed list so that the study's result does not change when a measure is added to the registry.
MEASURES = ("distance_from_init", "epsilon_sharpness", "frobenius_product", "hessian_trace", "l1_norm", "l2_norm",
            "margin", "normalized_margin", "pac_bayes_flatness", "pac_bayes_init", "pac_bayes_mag_flatness",
            "pac_bayes_mag_init", "pac_bayes_mag_orig", "pac_bayes_orig", "pac_bayes_sigma", "param_count",
            "path_norm", "spectral_complexity", "spectral_product", "sum_of_frobenius", "sum_of_spectral",
            "top_hessian_eigenvalue")
HYPERPARAMETERS = ("width", "depth", "lr", "batch_size", "weight_decay", "dropout")

#: The two sides of the claim, by registry family (Jiang et al.'s Table 1/2 and Section 6: the
#: flatness family scores highest, the norm products lowest, often negative).
FLAT_FAMILIES = ("flatness", "sharpness")
PRODUCT_FAMILIES = ("norm-product",)
RESAMPLES = 1000
LEVEL = 0.95
CONVERGED = ".converged"  # the tracked flag stored beside an iterative measure (1 converged, 0 not)
UNCONVERGED = ".unconverged"


class Config(Strict):
    """Configuration of ``measure-ranking``; every field can be set with ``--set``.

    The grid keeps to settings that reach the loss target within the budget (measured: 64-wide
    nets with dropout 0.1 plateaued at train loss 0.02–0.05 after 10k steps, and lr 0.1 with
    momentum 0.9 at batch 32 did not train two-layer nets); runs that miss it are left out.
    """

    data: DataConfig = Field(default_factory=lambda: DataConfig(n_train=500))
    widths: list[int] = Field(default_factory=lambda: [128, 256], min_length=1)
    depths: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)
    lrs: list[float] = Field(default_factory=lambda: [0.02, 0.05], min_length=1)
    batch_sizes: list[int] = Field(default_factory=lambda: [32, 128], min_length=1)
    weight_decays: list[float] = Field(default_factory=lambda: [0.0, 1e-4], min_length=1)
    dropouts: list[float] = Field(default_factory=lambda: [0.0, 0.05], min_length=1)
    seeds: int = Field(2, ge=1)
    measures: list[str] = Field(default_factory=lambda: list(MEASURES), min_length=1)
    min_models: int = Field(100, ge=2, description="models that must reach the loss target for the ranking")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(
        optimizer="momentum", momentum=0.9, max_steps=10000, eval_every=100, target_train_acc=None,
        target_train_loss=0.01, track_every=10000, track_expensive_every=10000))

    @field_validator("measures")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in APPLICABLE]
        if unknown:
            raise ValueError(f"unknown or inapplicable measure(s) {unknown}; expected any of {list(APPLICABLE)}")
        return names

    @field_validator("widths", "depths", "batch_sizes")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values) or len(set(values)) != len(values):
            raise ValueError(f"expected distinct positive integers, got {values}")
        return values

    @field_validator("lrs", "weight_decays", "dropouts")
    @classmethod
    def _distinct(cls, values: list[float]) -> list[float]:
        if len(set(values)) != len(values):
            raise ValueError(f"expected distinct values, got {values}")
        return values


def sign(name: str) -> float:
    """+1 where lower is simpler (and for the parameter count), −1 where higher is simpler."""
    return -1.0 if REGISTRY[name].lower_is_simpler is False else 1.0


class MeasureRanking:
    name = "measure-ranking"
    claim = ("Across a sweep of networks trained to the same loss, flatness measures predict the generalization "
             "gap better than norm products (ranked by Kendall τ and granulated τ).")
    paper = "Jiang, Neyshabur, Mobahi, Krishnan & Bengio 2020"
    minutes = (0.5, 7.2)  # quick, full: on 2 CPU cores
    # measured: 8 models give D = +0.38 with a 95% interval [−0.07, +1.13]; 32 (two lrs and seeds
    # added) D = −0.18 [−0.56, +0.25]; neither bounds the interval away from 0 either way
    quick_caveat = ("the claim compares families of measures over a sweep of all six hyperparameters; the "
                    "quick sweep's 8 models (one width, one batch size) leave its bootstrap interval spanning 0")
    Config = Config

    def defaults(self, quick: bool) -> dict[str, Any]:
        if not quick:
            return {}
        return {"data": {"n_train": 300}, "widths": [128], "depths": [1, 2], "batch_sizes": [64], "lrs": [0.05],
                "seeds": 1, "min_models": 6,
                "train": {"max_steps": 3000, "track_every": 3000, "track_expensive_every": 3000}}

    def plan(self, config: Config) -> list[Group]:
        # width, depth and batch size are shared by a population; lr, decay, dropout and seed are per member
        train = config.train.model_copy(update={"track": list(config.measures)})
        runs = []
        for width, depth, batch in itertools.product(config.widths, config.depths, config.batch_sizes):
            model = MLPConfig(hidden=[width] * depth)
            group_train = train.model_copy(update={"batch_size": batch})
            for lr, wd, dropout, seed in itertools.product(config.lrs, config.weight_decays, config.dropouts,
                                                           range(config.seeds)):
                arm = f"w{width}-d{depth}-b{batch}-lr{lr:g}-wd{wd:g}-do{dropout:g}"
                member = Member(f"{arm}/seed{seed}", seed=seed, lr=lr, weight_decay=wd, dropout=dropout, arm=arm)
                runs.append(("mlp", model, config.data, group_train, member))
        return group_runs(runs)

    def models(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
        """One row per run: hyperparameters, final metrics, measures, and whether it reached the target."""
        final = final_values(runs, metrics)
        settings = runs["config"].map(lambda c: {
            "width": c["model"]["hidden"][0], "depth": len(c["model"]["hidden"]), "batch_size": c["train"]["batch_size"],
            "lr": c["member"]["lr"], "weight_decay": c["member"]["weight_decay"], "dropout": c["member"]["dropout"]})
        frame = pd.concat([final.reset_index(drop=True), pd.DataFrame(list(settings))], axis=1)
        frame["reached"] = frame["target_step"].notna() & (frame["status"] == "done")
        return mark_unconverged(frame, config.measures)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame) -> Analysis:
        models = self.models(config, runs, metrics)
        reached = models[models["reached"]]
        table = ranking(config, reached)
        defined = int(table["tau"].notna().sum())
        claim = family_difference(config, reached)
        planned = len(models)
        checks = [
            Check.at_least("models trained to the loss target", len(reached), config.min_models,
                           detail=f"{len(reached)} of {planned} runs reached train loss "
                                  f"{config.train.target_train_loss} within {config.train.max_steps} steps; the "
                                  "others are left out, as in Jiang et al."),
            Check.equals("measures with a defined Kendall τ", defined, len(table),
                         detail="undefined: " + (", ".join(table.loc[table["tau"].isna(), "measure"]) or "none")),
            claim.check(),
        ]
        gap = reached["gap"]
        notes = [
            "τ: Kendall's τ-b over all models that reached the target between sign·measure and the generalization gap "
            "(train − test accuracy); Ψ: Jiang et al.'s granulated τ, the mean over hyperparameters of the mean τ "
            "within groups that differ only in that hyperparameter (seeds stay inside the groups); ranked by Ψ.",
            f"sweep: {len(reached)} models; generalization gap {gap.min():.3f} … {gap.max():.3f} (mean "
            f"{gap.mean():.3f}); varied: {', '.join(varied_in(reached)) or 'nothing'}." if len(reached) else
            "no model reached the loss target.",
            claim.note(),
        ]
        return Analysis(table, checks, notes)

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame, directory: Path) -> list[Path]:
        models = self.models(config, runs, metrics)
        table = ranking(config, models[models["reached"]])
        return [ranking_figure(table, directory / "ranking.png"),
                _scatter_figure(table, models[models["reached"]], directory / "measure_vs_gap.png")]


def varied_in(reached: pd.DataFrame) -> list[str]:
    """The hyperparameters that take more than one value among the models ranked."""
    return [h for h in HYPERPARAMETERS if reached[h].nunique() > 1] if len(reached) else []


def mark_unconverged(frame: pd.DataFrame, measures: list[str]) -> pd.DataFrame:
    """``frame`` (one row per model, final values) with a column per measure (NaN where absent) and
    ``NAME.unconverged``: True where the tracked ``NAME.converged`` flag is 0. An iterative estimate
    that did not converge is no value: it is set to NaN and leaves the ranking."""
    frame = frame.reindex(columns=[*frame.columns, *[m for m in measures if m not in frame]])
    for name in measures:
        flag = frame.get(f"{name}{CONVERGED}")
        frame[f"{name}{UNCONVERGED}"] = (flag == 0.0) if flag is not None else False
        frame.loc[frame[f"{name}{UNCONVERGED}"], name] = math.nan
    return frame


def ranking(config: Config, reached: pd.DataFrame) -> pd.DataFrame:
    """One row per measure: sign, models with a finite value, τ, Ψ and ψ per varied hyperparameter,
    ranked by Ψ (then τ)."""
    return rank_measures(reached, config.measures, varied_in(reached))


def rank_measures(reached: pd.DataFrame, measures: list[str], varied: list[str]) -> pd.DataFrame:
    """The ranking of ``measures`` against the generalization gap over the models of ``reached`` (one
    row each: the measures, ``gap``, the ``varied`` hyperparameters' columns and the columns of
    :func:`mark_unconverged`). One row per measure: sign, models with a finite value, τ, Ψ and ψ per
    varied hyperparameter (Ψ is NaN when none varies), ranked by Ψ (then τ)."""
    rows = []
    for name in measures:
        oriented = sign(name) * reached[name].astype(float)
        usable = reached.assign(oriented=oriented)[np.isfinite(oriented)]
        tau = kendall_tau(usable["oriented"], usable["gap"]) if len(usable) > 1 else math.nan
        row: dict[str, Any] = {"measure": name, "family": REGISTRY[name].family, "sign": int(sign(name)),
                               "models": len(usable), "unconverged": int(reached[f"{name}{UNCONVERGED}"].sum()),
                               "tau": tau}
        if varied and len(usable) > 1:
            granulated = granulated_kendall_tau(usable, "oriented", "gap", varied)
            row["psi"] = granulated.psi
            row.update({f"psi_{h}": granulated.per_hyperparameter[h] for h in varied})
        else:
            row["psi"] = math.nan
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["psi", "tau"], ascending=False, na_position="last")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


@dataclass(frozen=True)
class FamilyDifference:
    """D = mean Ψ of the flatness and sharpness measures − mean Ψ of the norm products, with its
    bootstrap percentile interval over models."""

    flat: tuple[str, ...]
    products: tuple[str, ...]
    models: Support | None  # the claim measure with the fewest finite values, of the models ranked
    estimate: float
    low: float
    high: float
    resamples: int
    defined: int

    def check(self) -> Check:
        missing = ("" if self.flat and self.products else
                   "the measures tracked include no " + ("flatness or sharpness measure" if not self.flat
                                                        else "norm-product measure"))
        return Check.interval_above(
            "mean Ψ of flatness + sharpness minus mean Ψ of norm products", self.estimate, self.low, self.high, 0.0,
            detail=f"{LEVEL:.0%} bootstrap interval [{self.low:+.3f}, {self.high:+.3f}] over {self.defined} of "
                   f"{self.resamples} resamples of the models; {len(self.flat)} flatness/sharpness measures vs "
                   f"{len(self.products)} norm products",
            support=weakest(self.models, Support(self.defined, self.resamples, "resamples")), unreliable=missing)

    def note(self) -> str:
        return (f"claim: flatness + sharpness ({', '.join(self.flat) or 'none'}) against norm products "
                f"({', '.join(self.products) or 'none'}): D = {self.estimate:+.3f}, {LEVEL:.0%} bootstrap interval "
                f"[{self.low:+.3f}, {self.high:+.3f}] ({self.defined} of {self.resamples} resamples defined).")


def family_difference(config: Config, reached: pd.DataFrame, resamples: int = RESAMPLES,
                      seed: int = 0) -> FamilyDifference:
    """The claim's number: D on the models that reached the target, and its bootstrap interval
    (models drawn with replacement, every Ψ recomputed on each resample)."""
    flat = tuple(m for m in config.measures if REGISTRY[m].family in FLAT_FAMILIES)
    products = tuple(m for m in config.measures if REGISTRY[m].family in PRODUCT_FAMILIES)
    varied = varied_in(reached)
    models = weakest(*(Support.of(reached[m], len(reached), "models") for m in (*flat, *products)))
    if not flat or not products or not varied or len(reached) < 2:
        return FamilyDifference(flat, products, models, math.nan, math.nan, math.nan, resamples, 0)
    names = [*flat, *products]
    values = np.stack([sign(m) * reached[m].to_numpy(dtype=float) for m in names])
    gaps, codes = reached["gap"].to_numpy(dtype=float), group_codes(reached, varied)

    def difference(rows: np.ndarray | None) -> float:
        psi = granulated_psi(values, gaps, codes, rows)
        sides = psi[: len(flat)], psi[len(flat):]
        if any(np.isnan(side).all() for side in sides):
            return math.nan
        return float(np.nanmean(sides[0]) - np.nanmean(sides[1]))

    rng = np.random.default_rng(seed)
    draws = np.array([difference(rng.integers(0, len(reached), len(reached))) for _ in range(resamples)])
    draws = draws[np.isfinite(draws)]
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(draws, [tail, 100 - tail]) if len(draws) else (math.nan, math.nan)
    return FamilyDifference(flat, products, models, difference(None), float(low), float(high), resamples, len(draws))


def ranking_figure(table: pd.DataFrame, path: Path) -> Path:
    """Horizontal bars of Ψ and τ per measure, best at the top."""
    order = table.iloc[::-1]
    fig, ax = subplots(figsize=(7.5, 0.32 * len(order) + 1.5))
    y = np.arange(len(order))
    ax.barh(y + 0.2, order["psi"].fillna(0), height=0.4, label="granulated τ (Ψ)", color="C0")
    ax.barh(y - 0.2, order["tau"].fillna(0), height=0.4, label="Kendall τ", color="C1")
    ax.set_yticks(y, [f"{m}{' (−)' if s < 0 else ''}" for m, s in zip(order["measure"], order["sign"])], fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("correlation with the generalization gap (positive: predicts it)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("measures ranked by Ψ ((−): the measure's sign is flipped, higher = simpler)", fontsize=9)
    return save_figure(fig, path)


def _scatter_figure(table: pd.DataFrame, models: pd.DataFrame, path: Path) -> Path:
    """Generalization gap against the three best and the three worst measures (log x where positive)."""
    names = list(dict.fromkeys([*table["measure"].head(3), *table["measure"].tail(3)]))
    fig, axes = subplots(2, 3, figsize=(12, 7), squeeze=False)
    for ax, name in zip(axes.flat, names):
        values = models[name].astype(float)
        ok = np.isfinite(values)
        ax.scatter(values[ok], models.loc[ok, "gap"], c=np.log2(models.loc[ok, "width"]), s=12, cmap="viridis")
        if ok.any() and (values[ok] > 0).all() and values[ok].max() / values[ok].min() > 20:
            ax.set_xscale("log")
        row = table.set_index("measure").loc[name]
        ax.set_title(f"#{int(row['rank'])} {name}: Ψ {row['psi']:.2f}, τ {row['tau']:.2f}", fontsize=9)
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel("generalization gap")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle("gap against the best (top row) and worst (bottom row) measures; colour: log₂ width")
    return save_figure(fig, path)


STUDY = MeasureRanking()
