"""width: past interpolation, wider networks keep generalizing better while parameters explode.

Neyshabur, Tomioka & Srebro (2015), "In search of the real inductive bias: on the role of implicit
regularization in deep learning".

Claim checked: two-layer ReLU networks of hidden width 4 … 4096 trained by SGD on MNIST-1D
without explicit regularization: the test error at the widest network is no larger than at the
interpolation threshold (the narrowest width whose runs fit the training set), although the
parameter count grows a thousandfold; capacity measured by parameters cannot explain it, while
norm-based measures (path norm, spectral complexity) are tracked to see which stay bounded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field, model_validator

from implicitreg.config import DataConfig, MLPConfig, Strict, TrainConfig
from implicitreg.plan import Group, Member, group_runs
from implicitreg.report import figures as fig
from implicitreg.studies.base import Analysis, Check, Support, final_values, mean_std, tagged, weakest

FIT_MIN = 0.99  # "fits the training set": mean train accuracy over seeds
MEASURES = ("path_norm", "spectral_complexity")


class Config(Strict):
    """Configuration of ``width``; every field can be set with ``--set``."""

    data: DataConfig = Field(default_factory=DataConfig)
    widths: list[int] = Field(default_factory=lambda: [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
                              min_length=2)
    seeds: int = Field(3, ge=1)
    init_scale: float = Field(1.0, gt=0.0)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(
        optimizer="momentum", lr=0.05, momentum=0.9, batch_size=128, max_steps=4000, eval_every=500,
        target_train_acc=1.0, schedule="cosine", track=list(MEASURES), track_every=4000))

    @model_validator(mode="after")
    def _widths(self) -> "Config":
        if any(w < 1 for w in self.widths) or sorted(set(self.widths)) != self.widths:
            raise ValueError(f"widths must be increasing positive integers, got {self.widths}")
        return self


class Width:
    name = "width"
    claim = ("Wider two-layer ReLU networks test no worse at the widest width than at the interpolation "
             "threshold, though their parameter count explodes.")
    paper = "Neyshabur, Tomioka & Srebro 2015"
    Config = Config
    minutes = (0.5, 1.1)  # quick, full: on 2 CPU cores

    def defaults(self, quick: bool) -> dict[str, Any]:
        if not quick:
            return {}
        # the same checks on fewer widths and seeds: 128 (which does not fit), 256 (the first that does in the
        # full sweep) and 2048, on the full budget. A grid that skips the threshold (16, 512, 2048) compares
        # two widths deep past it, where the test error is flat, and its verdict is a coin flip.
        return {"seeds": 2, "widths": [128, 256, 2048]}

    def plan(self, config: Config) -> list[Group]:
        # every width is its own architecture, hence its own population of seeds
        runs = []
        for width in config.widths:
            model = MLPConfig(hidden=[width], init_scale=config.init_scale)
            for seed in range(config.seeds):
                member = Member(f"w{width}/seed{seed}", seed=seed, lr=config.train.lr,
                                init_scale=config.init_scale, arm=f"w{width}", tags={"width": width})
                runs.append(("mlp", model, config.data, config.train, member))
        return group_runs(runs)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame) -> Analysis:
        final = _final(config, runs, metrics)
        rows = []
        # every planned width has a row, a width whose runs are all missing too (its values NaN)
        for width in sorted({*config.widths, *final["width"].astype(int)}):
            part = final[final["width"] == width]
            row: dict[str, Any] = {"width": int(width), "params": _params(config, int(width)), "runs": len(part),
                                   "reached_target": f"{int(part['target_step'].notna().sum())}/{config.seeds}"}
            for name in ("train_acc", "test_acc", "gap", "l2_norm", *config.train.track):
                row[f"{name}_mean"], row[f"{name}_std"] = mean_std(part[name])
            row["steps_mean"], row["steps_std"] = mean_std(part["final_step"].astype(float))
            rows.append(row)
        table = pd.DataFrame(rows)
        return Analysis(table, _checks(table, final, config.seeds), [
            f"interpolation threshold: the narrowest width with mean train accuracy ≥ {FIT_MIN}; test error = 1 − "
            "test accuracy; means over seeds."])

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame, directory: Path) -> list[Path]:
        table = self.analyze(config, runs, metrics).table
        paths = [fig.save_figure(_accuracy_vs_width(table), directory / "accuracy_vs_width.png")]
        tracked = [name for name in config.train.track if f"{name}_mean" in table]
        if tracked:
            paths.append(fig.save_figure(_measures_vs_width(table, ["l2_norm", *tracked]),
                                         directory / "measures_vs_width.png"))
        labelled = metrics.merge(_with_width(runs, runs)[["run_id", "width"]], on="run_id").assign(
            model="mlp", width=lambda f: f["width"].map(lambda w: f"w{w}"))
        order = {"model": ["mlp"], "width": [f"w{w}" for w in config.widths]}
        paths.append(fig.curves(labelled, "test_acc", panel="model", line="width", order=order,
                                title="test accuracy along training, by hidden width",
                                path=directory / "curves_test_acc.png"))
        return paths


def _final(config: Config, runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run with its last evaluation (NaN for a run never evaluated or diverged)."""
    return _with_width(final_values(runs, metrics), runs).reindex(
        columns=[*runs.columns.drop(["config", "provenance"]), "width", "train_acc", "test_acc", "gap", "l2_norm",
                 *config.train.track])


def _with_width(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Add the ``width`` tag of each run."""
    return tagged(frame, runs, required=("width",)).astype({"width": int})


def _params(config: Config, width: int) -> int:
    d, k = (40, 10) if config.data.name == "mnist1d" else (config.data.dim, 10)
    return d * width + width + width * k + k


FITS = "widest width fits the training set"
GAP = "test error at the widest minus at the interpolation threshold"


def _checks(table: pd.DataFrame, final: pd.DataFrame, seeds: int) -> list[Check]:
    """Whether the widest width fits, and its test error against the interpolation threshold's.

    ``table`` has a row per width (increasing), ``final`` a row per run: how many seeds of the
    ``seeds`` planned each mean rests on. The threshold is only located when every width up to it
    has its train accuracy: a width without one could be the threshold.
    """
    if table.empty:
        return [Check.at_least(FITS, None, FIT_MIN, detail="no width ran"),
                Check.at_most(GAP, None, 0.0, detail="no width ran")]

    def support(width: int, column: str) -> Support:
        return Support.of(final.loc[final["width"] == width, column], seeds, "seeds")

    widest = table.iloc[-1]
    widest_width = int(widest["width"])
    checks = [Check.at_least(FITS, widest["train_acc_mean"], FIT_MIN, detail=f"width {widest_width}",
                             support=support(widest_width, "train_acc"))]
    threshold, unknown = None, None
    for row in table.itertuples():
        if not support(int(row.width), "train_acc").enough or pd.isna(row.train_acc_mean):
            unknown = int(row.width)
            break
        if row.train_acc_mean >= FIT_MIN:
            threshold = row
            break
    if unknown is not None:
        checks.append(Check.at_most(GAP, None, 0.0, detail=(
            f"width {unknown} has train accuracy from {support(unknown, 'train_acc').describe()}: whether it is the "
            "interpolation threshold is unknown")))
    elif threshold is None:
        checks.append(Check.at_most(GAP, None, 0.0, detail=(
            f"no width reached mean train accuracy {FIT_MIN}: no interpolation threshold")))
    elif int(threshold.width) == widest_width:
        checks.append(Check.at_most(GAP, None, 0.0, detail=(
            f"only the widest width ({widest_width}) fits: no width beyond the threshold ran")))
    else:
        error_threshold, error_widest = 1.0 - threshold.test_acc_mean, 1.0 - float(widest["test_acc_mean"])
        checks.append(Check.at_most(
            GAP, error_widest - error_threshold, 0.0,
            detail=(f"threshold width {int(threshold.width)}: test error {error_threshold:.4f}; widest width "
                    f"{widest_width}: {error_widest:.4f}; parameters {int(threshold.params)} → "
                    f"{int(widest['params'])}"),
            support=weakest(support(int(threshold.width), "test_acc"), support(widest_width, "test_acc"))))
    return checks


def _threshold_width(table: pd.DataFrame) -> int | None:
    """The interpolation threshold as the figures draw it: the narrowest width whose mean train
    accuracy is ≥ FIT_MIN, None where none is or a narrower width has no value (see :func:`_checks`)."""
    for row in table.itertuples():
        if pd.isna(row.train_acc_mean):
            return None
        if row.train_acc_mean >= FIT_MIN:
            return int(row.width)
    return None


def _width_axis(ax, widths: list[int]) -> None:
    """Hidden width on a log₂ axis, each planned width a tick labelled with its value."""
    fig.log_ticks(ax, widths, base=2, fontsize=8 if len(widths) <= 8 else 7)
    ax.set_xlabel("hidden width (log scale)")


def _accuracy_vs_width(table: pd.DataFrame) -> Figure:
    """The claim at a glance: train accuracy (%) against width with the fit threshold, which locates
    the interpolation threshold; test accuracy (%) against width with the threshold width's test
    accuracy drawn across, which the widest width must reach (mean ± std over seeds)."""
    figure, (train, test) = fig.subplots(1, 2, figsize=(11, 4.0))
    widths = [int(w) for w in table["width"]]
    threshold = _threshold_width(table)
    for ax, name, colour in ((train, "train_acc", "C0"), (test, "test_acc", "C1")):
        ax.errorbar(widths, 100 * table[f"{name}_mean"], yerr=100 * table[f"{name}_std"].fillna(0), marker="o",
                    capsize=3, color=colour, label=f"{fig.label(name)} (mean ± std)")
        if threshold is not None:
            ax.axvline(threshold, color="tab:green", linestyle="--", linewidth=1,
                       label=f"interpolation threshold (width {threshold})")
        _width_axis(ax, widths)
        ax.set_ylabel(fig.axis_label(name))
        ax.grid(alpha=0.3)
    train.axhline(100 * FIT_MIN, color="black", linestyle=":", linewidth=1,
                  label=f"fits the training set: ≥ {100 * FIT_MIN:g}%")
    train.set_title(f"train accuracy: the first width ≥ {100 * FIT_MIN:g}% is the threshold", fontsize=10)
    widest = table.iloc[-1] if len(table) else None
    params = ""
    if threshold is None:
        test.set_title(f"test accuracy (no width reached {100 * FIT_MIN:g}% train accuracy: no threshold)",
                       fontsize=10)
    elif int(widest["width"]) == threshold:
        test.set_title("test accuracy (no width past the interpolation threshold to compare)", fontsize=10)
    else:
        at = table[table["width"] == threshold].iloc[0]
        reference, reached = 100 * float(at["test_acc_mean"]), 100 * float(widest["test_acc_mean"])
        params = f"; parameters {int(at['params']):,} → {int(widest['params']):,}"
        if math.isfinite(reference):
            test.axhline(reference, color="tab:green", linestyle=":", linewidth=1,
                         label=f"test accuracy at the threshold ({reference:.1f}%)")
        if math.isfinite(reached):
            test.plot([int(widest["width"])], [reached], marker="*", markersize=14, color="C1", linestyle="none",
                      label=f"widest width ({int(widest['width'])}): {reached:.1f}%")
        if math.isfinite(reference) and math.isfinite(reached):
            test.set_title(f"test accuracy: widest {reached:.1f}% vs {reference:.1f}% at the threshold\n"
                           f"({reached - reference:+.1f} points; the claim needs ≥ 0)", fontsize=10,
                           color="black" if reached >= reference else "tab:red")
        else:
            test.set_title("test accuracy (the threshold or the widest width has no value)", fontsize=10)
    for ax in (train, test):
        ax.legend(fontsize=7, loc="lower right")
    figure.suptitle(f"width: past the interpolation threshold, the widest network tests no worse{params}")
    return figure


def _measures_vs_width(table: pd.DataFrame, names: list[str]) -> Figure:
    """Each capacity measure against width (log axes, mean ± std over seeds), beside the growth the
    parameter count would give it (dotted, through the narrowest width's value): a measure that stays
    under the dotted line grows slower than the parameters."""
    figure, axes = fig.subplots(1, len(names), figsize=(4.2 * len(names), 3.9), squeeze=False)
    widths = [int(w) for w in table["width"]]
    params = table["params"].astype(float)
    growth = float(params.iloc[-1] / params.iloc[0]) if len(params) else math.nan
    for ax, name in zip(axes[0], names):
        mean, std = table[f"{name}_mean"], table[f"{name}_std"].fillna(0)
        ax.errorbar(widths, mean, yerr=std, marker="o", capsize=3, label=f"{fig.label(name)} (mean ± std)")
        finite = mean.dropna()
        if len(finite) >= 2:
            first, last = finite.index[0], finite.index[-1]
            ax.plot(widths, mean[first] * params / params[first], color="grey", linestyle=":",
                    label="if it grew like the parameters")
            ax.set_title(f"{fig.label(name)}: ×{mean[last] / mean[first]:.2g} from width {widths[first]} to "
                         f"{widths[last]}", fontsize=10)
        else:
            ax.set_title(fig.label(name), fontsize=10)
        fig.log_axis(ax, "y")
        _width_axis(ax, widths)
        ax.set_ylabel(fig.axis_label(name))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    if widths:
        figure.suptitle(f"capacity vs width (mean ± std over seeds): parameters grow ×{growth:.3g} from width "
                        f"{widths[0]} to {widths[-1]} (dotted); a measure below the dotted line grows slower")
    return figure


STUDY = Width()
