"""measure-ranking: which complexity measure predicts generalization across a sweep of networks.

Jiang, Neyshabur, Mobahi, Krishnan & Bengio (2020), "Fantastic generalization measures and where
to find them" (ICLR).

What is checked: a sweep of MLPs on MNIST-1D over width, depth, learning rate, batch size, weight
decay, dropout and seeds, each trained to the same train cross-entropy (Jiang et al.'s 0.01);
every measure of the library that applies to an MLP is computed at that point, and each is scored
by Kendall's τ and the granulated τ (Ψ) between it and the generalization gap. The verdict checks
that the sweep and the scores were computed (enough models reached the loss target; every
measure has a defined τ). How the ranking compares with Jiang et al.'s qualitative finding —
sharpness and PAC-Bayes flatness measures near the top, spectral-norm products near the bottom
or negative — is reported as an observation, not a check.

Orientation: τ is computed for (sign · measure, gap) with sign = +1 where a lower value means a
simpler model and −1 where a higher value does (margins, σ), so a positive τ always means "ranks
models as the theory behind the measure says".
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from implicitreg.config import DataConfig, MLPConfig, Strict, TrainConfig
from implicitreg.evaluate import granulated_kendall_tau, kendall_tau
from implicitreg.measures import REGISTRY
from implicitreg.plan import Group, Member, group_runs
from implicitreg.report.figures import save_figure, plt
from implicitreg.studies.base import Analysis, Check, final_values

#: Measures of the end-to-end matrix of a linear (factorized) model: undefined for a ReLU MLP.
LINEAR_ONLY = ("effective_rank", "nuclear_norm", "stable_rank")
MEASURES = tuple(sorted(name for name in REGISTRY if name not in LINEAR_ONLY))
HYPERPARAMETERS = ("width", "depth", "lr", "batch_size", "weight_decay", "dropout")

#: Jiang et al.'s qualitative groups (their Table 1/2 and Section 6): the flatness family scores
#: highest, the spectral-norm products lowest (often negative).
FLATNESS = ("pac_bayes_sigma", "pac_bayes_flatness", "pac_bayes_mag_flatness", "pac_bayes_mag_init",
            "pac_bayes_mag_orig", "epsilon_sharpness", "top_hessian_eigenvalue", "hessian_trace")
SPECTRAL = ("spectral_product", "spectral_complexity", "sum_of_spectral", "normalized_margin")


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
        unknown = [n for n in names if n not in MEASURES]
        if unknown:
            raise ValueError(f"unknown or inapplicable measure(s) {unknown}; expected any of {list(MEASURES)}")
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
        return frame.reindex(columns=[*frame.columns, *[m for m in config.measures if m not in frame]])

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame) -> Analysis:
        models = self.models(config, runs, metrics)
        reached = models[models["reached"]]
        varied = [h for h in HYPERPARAMETERS if reached[h].nunique() > 1] if len(reached) else []
        rows = []
        for name in config.measures:
            oriented = sign(name) * reached[name].astype(float)
            usable = reached.assign(oriented=oriented)[np.isfinite(oriented)]
            tau = kendall_tau(usable["oriented"], usable["gap"]) if len(usable) > 1 else math.nan
            row: dict[str, Any] = {"measure": name, "sign": int(sign(name)), "models": len(usable), "tau": tau}
            if varied and len(usable) > 1:
                granulated = granulated_kendall_tau(usable, "oriented", "gap", varied)
                row["psi"] = granulated.psi
                row.update({f"psi_{h}": granulated.per_hyperparameter[h] for h in varied})
            else:
                row["psi"] = math.nan
            rows.append(row)
        table = pd.DataFrame(rows).sort_values(["psi", "tau"], ascending=False, na_position="last")
        table.insert(0, "rank", range(1, len(table) + 1))
        table = table.reset_index(drop=True)
        defined = int(table["tau"].notna().sum())
        checks = [
            Check("models trained to the loss target", float(len(reached)), f">= {config.min_models}",
                  bool(len(reached) >= config.min_models),
                  f"{len(reached)} of {len(models)} runs reached train loss {config.train.target_train_loss} within "
                  f"{config.train.max_steps} steps; the others are left out, as in Jiang et al."),
            Check("measures with a defined Kendall τ", float(defined), f"= {len(table)}", bool(defined == len(table)),
                  "undefined: " + (", ".join(table.loc[table["tau"].isna(), "measure"]) or "none")),
        ]
        gap = reached["gap"]
        notes = [
            "τ: Kendall's τ-b over all models that reached the target between sign·measure and the generalization gap "
            "(train − test accuracy); Ψ: Jiang et al.'s granulated τ, the mean over hyperparameters of the mean τ "
            "within groups that differ only in that hyperparameter (seeds stay inside the groups); ranked by Ψ.",
            f"sweep: {len(reached)} models; generalization gap {gap.min():.3f} … {gap.max():.3f} (mean "
            f"{gap.mean():.3f}); varied: {', '.join(varied) or 'nothing'}." if len(reached) else "no model reached "
            "the loss target.",
            observation(table),
        ]
        return Analysis(table, checks, notes)

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame, directory: Path) -> list[Path]:
        table = self.analyze(config, runs, metrics).table
        models = self.models(config, runs, metrics)
        return [_ranking_figure(table, directory / "ranking.png"),
                _scatter_figure(table, models[models["reached"]], directory / "measure_vs_gap.png")]


def observation(table: pd.DataFrame) -> str:
    """How the ranking compares with Jiang et al.'s qualitative finding, in one sentence (no check)."""
    ranked = table.dropna(subset=["psi"])
    if ranked.empty:
        return "comparison with Jiang et al.: no measure has a defined Ψ."
    half = len(ranked) / 2
    position = {m: int(r) for m, r in zip(ranked["measure"], ranked["rank"])}
    flat = [m for m in FLATNESS if m in position]
    spectral = [m for m in SPECTRAL if m in position]
    flat_top = [m for m in flat if position[m] <= half]
    spec_low = [m for m in spectral if position[m] > half or float(ranked.set_index("measure").loc[m, "psi"]) < 0]
    best = ranked.iloc[0]
    return (f"comparison with Jiang et al. (flatness near the top, spectral products near the bottom or negative): "
            f"{len(flat_top)}/{len(flat)} flatness/sharpness measures rank in the top half "
            f"({', '.join(f'{m} #{position[m]}' for m in flat)}); {len(spec_low)}/{len(spectral)} spectral measures "
            f"rank in the bottom half or have Ψ < 0 ({', '.join(f'{m} #{position[m]}' for m in spectral)}); "
            f"best: {best['measure']} (Ψ = {best['psi']:.3f}, τ = {best['tau']:.3f}).")


def _ranking_figure(table: pd.DataFrame, path: Path) -> Path:
    """Horizontal bars of Ψ and τ per measure, best at the top."""
    order = table.iloc[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(order) + 1.5))
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
    fig, axes = plt.subplots(2, 3, figsize=(12, 7), squeeze=False)
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
