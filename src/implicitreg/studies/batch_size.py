"""batch-size: small batches and a large ratio η/B find flatter minima that generalize better.

Keskar, Mudigere, Nocedal, Smelyanskiy & Tang (2017), "On large-batch training for deep learning:
generalization gap and sharp minima"; Jastrzębski, Kenton, Arpit, Ballas, Fischer, Bengio & Storkey
(2017), "Three factors influencing minima in SGD".

Claim checked: plain SGD (constant learning rate η, no momentum, no explicit regularization) trains
a one-hidden-layer ReLU MLP on MNIST-1D with batch sizes B from 16 to the full batch and a sweep of
η, every run with the same budget in epochs. The sharpness of the minimum a run ends in — the top
eigenvalue of the Hessian of the training loss — falls as η/B grows (Spearman ρ(η/B, sharpness)
≤ −0.5 over the runs that fitted the training set), and test accuracy rises with η/B
(ρ(η/B, test accuracy) ≥ +0.3). Keskar's comparison — the smallest batch against the full batch at
the same η — is reported beside it, as is the edge-of-stability value 2/η that the sharpness of
full-batch gradient descent settles at (Cohen, Kaur, Li, Kolter & Talwalkar 2021): η/B sets the
noise scale of SGD (Jastrzębski et al.), and stability bounds the sharpness a run can stay in.

Design:
- One population per batch size (the batch size is shared by a population); its members are the
  learning rates × seeds. Seed s gives the same initialization at every (B, η).
- Same budget in epochs: a run with batch size B has at most ``epochs · ⌊n/B⌋`` steps (each epoch
  is a fresh permutation cut into ⌊n/B⌋ batches; the last n mod B points of a permutation are
  skipped, none when B divides n — the default n = 1024 and powers of two). B = n is full-batch GD.
  Defaults: n = 1024 MNIST-1D training points (of the paper's 4000, to fit the time budget), its
  1000 test points, one hidden layer of width 128, float64; B ∈ {16, 32, …, 1024}, η ∈ {0.03, 0.1,
  0.3, 1, 2}, 3 seeds (105 runs), a budget of 1000 epochs.
- A comparable point: sharpness is a property of a minimum, so a run stops once it fits the
  training set (train accuracy ≥ ``fit_acc`` = 0.99 at an evaluation, every ``eval_epochs`` = 5
  epochs; SGD at large η/B hovers just below 100%), or at the budget. Its sharpness is measured
  once, on the whole training set, at that last step (``track_every`` = the budget; Lanczos with
  full reorthogonalization to a relative residual of 1e-6 or 200 Hessian-vector products, see
  :func:`implicitreg.measures.curvature.top_hessian_eigenvalue`).
- Excluded from the correlations, and listed: runs that diverged (the loop froze them at a
  non-finite loss, or their final train loss is no better than the uniform predictor's, ln C, or
  they collapsed to at most twice chance train accuracy — a learning rate too large for the batch
  size), and runs that did not fit within the budget (not at a minimum yet, so their sharpness is
  not that of one: large batches at small η need more epochs than the budget gives). How many of
  each is part of the result, and the correlations with the unfitted runs counted too are reported.
- A correlation should have a point for every planned run not excluded by design; a run that did
  not finish, never ran, or lost its value is missing, and a check computed from fewer than half of
  those points is inconclusive. The sharpness check is inconclusive, too, when the Lanczos estimate
  of a run's sharpness did not converge (``top_hessian_eigenvalue.converged`` = 0, where recorded).

Cost: about 3.5 CPU-minutes for the full sweep with one thread; the populations are tiny, so each
step is Python overhead, and ``--threads 1`` is several times faster than two threads on 2 cores.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from implicitreg.config import DataConfig, MLPConfig, Strict, TrainConfig
from implicitreg.plan import Group, Member, group_runs
from implicitreg.report import figures as fig
from implicitreg.evaluate import spearman
from implicitreg.studies.base import Analysis, Check, Support, final_values, mean_std, n_classes, tagged

SHARPNESS = "top_hessian_eigenvalue"
SHARPNESS_RHO_MAX = -0.5  # Spearman ρ(η/B, sharpness): larger η/B → flatter
TEST_RHO_MIN = 0.3  # Spearman ρ(η/B, test accuracy): larger η/B → better test accuracy
MIN_POINTS = 4  # runs needed for a correlation


class Config(Strict):
    """Configuration of ``batch-size``; every field can be set with ``--set``."""

    data: DataConfig = Field(default_factory=lambda: DataConfig(n_train=1024))
    mlp: MLPConfig = Field(default_factory=lambda: MLPConfig(hidden=[128]))
    batch_sizes: list[int] = Field(default_factory=lambda: [16, 32, 64, 128, 256, 512, 1024], min_length=2,
                                   description="increasing; data.n_train is the full batch")
    lrs: list[float] = Field(default_factory=lambda: [0.03, 0.1, 0.3, 1.0, 2.0], min_length=1,
                             description="constant learning rates η (increasing)")
    seeds: int = Field(3, ge=1, description="seeds per (B, η), the same seeds everywhere")
    epochs: int = Field(1000, ge=1, description="training budget in epochs, the same for every run")
    fit_acc: float | None = Field(0.99, gt=0.0, le=1.0,
                                  description="a run stops once it fits: train accuracy ≥ fit_acc (None: never)")
    eval_epochs: int = Field(5, ge=1, description="evaluate (and test for a fit) every this many epochs")
    dtype: Literal["float32", "float64"] = Field(
        "float64", description="float64 lets Lanczos reach its 1e-6 residual on the Hessian")

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.data.name not in ("mnist1d", "digits"):
            raise ValueError(f"data: batch-size needs a 10-class data set (mnist1d, digits), got {self.data.name}")
        if self.data.n_train is None:
            raise ValueError("data.n_train: batch-size needs an explicit training-set size (the full batch), "
                             "got None")
        if any(b < 1 for b in self.batch_sizes) or sorted(set(self.batch_sizes)) != self.batch_sizes:
            raise ValueError(f"batch_sizes must be strictly increasing positive integers, got {self.batch_sizes}")
        if self.batch_sizes[-1] > self.data.n_train:
            raise ValueError(f"batch_sizes: at most data.n_train = {self.data.n_train} (the full batch), "
                             f"got {self.batch_sizes[-1]}")
        if any(lr <= 0 for lr in self.lrs) or sorted(set(self.lrs)) != self.lrs:
            raise ValueError(f"lrs must be strictly increasing positive numbers, got {self.lrs}")
        return self

    def steps(self, batch_size: int) -> int:
        """The budget of a run with batch size B: ``epochs · ⌊n_train / B⌋`` steps."""
        return self.epochs * (self.data.n_train // batch_size)


def run_id(batch_size: int, lr: float, seed: int) -> str:
    return f"B{batch_size}/lr{lr:g}/seed{seed}"


class BatchSize:
    name = "batch-size"
    claim = ("With the same budget in epochs, SGD with a larger ratio η/B (small batch, large learning rate) ends "
             "in flatter minima (lower top Hessian eigenvalue) that generalize better.")
    paper = "Keskar et al. 2017; Jastrzębski et al. 2017"
    Config = Config
    minutes = (0.4, 7.3)  # quick, full: on 2 CPU cores, --threads 1

    def defaults(self, quick: bool) -> dict[str, Any]:
        if not quick:
            return {}
        # the same checks on one seed, three batch sizes and learning rates, 300 epochs: 9 points, of which
        # the full batch at η = 0.1 and 0.3 do not fit (excluded, as in the full sweep); ~20 s
        return {"seeds": 1, "batch_sizes": [16, 128, 1024], "lrs": [0.1, 0.3, 1.0], "epochs": 300}

    def plan(self, config: Config) -> list[Group]:
        runs = []
        for batch in config.batch_sizes:
            steps = config.steps(batch)
            # the same budget in epochs, a stop once fitted; the sharpness once, at each run's last step
            every = config.eval_epochs * (config.data.n_train // batch)
            train = TrainConfig(optimizer="sgd", schedule="constant", lr=config.lrs[0], batch_size=batch,
                                max_steps=steps, eval_every=min(every, steps), target_train_acc=config.fit_acc,
                                dtype=config.dtype, track=[SHARPNESS], track_every=steps,
                                track_expensive_every=steps)
            for lr in config.lrs:
                for seed in range(config.seeds):
                    member = Member(run_id(batch, lr, seed), seed=seed, lr=lr, init_scale=config.mlp.init_scale,
                                    arm=f"B{batch}/lr{lr:g}", tags={"batch": batch, "lr": lr})
                    runs.append(("mlp", config.mlp, config.data, train, member))
        return group_runs(runs)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame) -> Analysis:
        final = finals(config, runs, metrics)
        table = _table(config, final)
        kept = final[~final["excluded"]]
        # the points a correlation should have: every planned run but those excluded by design (diverged,
        # or not at a minimum); a run that did not finish, never ran or lost its value counts as missing
        planned = len(config.batch_sizes) * len(config.lrs) * config.seeds
        expected = planned - int(final["why"].str.startswith(("diverged", "did not fit")).sum())
        sharpness = _rho(kept, SHARPNESS)
        test = _rho(kept, "test_acc")
        checks = [
            Check.at_most("Spearman ρ(η/B, sharpness)", sharpness[0], SHARPNESS_RHO_MAX, detail=sharpness[1],
                          support=Support.of(kept[SHARPNESS], expected) if expected else None,
                          unreliable=_not_converged(kept, SHARPNESS)),
            Check.at_least("Spearman ρ(η/B, test accuracy)", test[0], TEST_RHO_MIN, detail=test[1],
                           support=Support.of(kept["test_acc"], expected) if expected else None),
        ]
        n = config.data.n_train
        fit = f"train accuracy ≥ {config.fit_acc:g}" if config.fit_acc is not None else "never (no target)"
        definitions = (
            f"sharpness = top eigenvalue of the Hessian of the mean training loss on all {n} training points, at "
            f"each run's last step (Lanczos); η/B = learning rate / batch size. Plain SGD (constant η, no momentum) "
            f"with a budget of {config.epochs} epochs = {config.epochs}·⌊{n}/B⌋ steps; a run stops early once it "
            f"fits ({fit}, tested every {config.eval_epochs} epochs); B = {n} is full-batch GD. ρ: Spearman rank "
            "correlation over the runs not excluded (each run one point; ties share ranks). Means ± std over the "
            "seeds not excluded.")
        notes = [definitions, _excluded_note(final), _unfitted_note(final), *_keskar_notes(config, final),
                 *_stability_notes(config, table)]
        return Analysis(table, checks, [note for note in notes if note])

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame, directory: Path) -> list[Path]:
        final = finals(config, runs, metrics)
        paths = [
            _versus(config, final, "ratio", SHARPNESS, directory / "sharpness_vs_lr_over_batch.png", "η / B",
                    log_y=True, title="sharpness at the end of training vs η/B"),
            _versus(config, final, "ratio", "test_acc", directory / "test_acc_vs_lr_over_batch.png", "η / B",
                    log_y=False, title="test accuracy vs η/B"),
            _versus(config, final, "lr", SHARPNESS, directory / "sharpness_vs_lr.png", "learning rate η",
                    log_y=True, stability=True,
                    title="sharpness vs η; dashed: 2/η (edge of stability of GD)"),
        ]
        if "test_acc" in set(metrics["name"]):
            paths.append(_curves(config, final, metrics, "test_acc", directory / "curves_test_acc.png"))
        return paths


def finals(config: Config, runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run: final metrics, batch size, η, η/B (plan tags), epochs trained, and why a run
    is ``excluded`` from the correlations (diverged, did not fit, did not finish: see the module)."""
    names = ["train_loss", "train_acc", "test_acc", "gap", SHARPNESS]
    # diverged runs keep their last records: they are excluded below, and listed with their reason
    final = final_values(runs, metrics, keep_diverged=True)
    final = final.reindex(columns=list(dict.fromkeys([*final.columns, *names])))  # NaN if never recorded
    final = tagged(final, runs, required=("batch", "lr"))
    final["batch"] = final["batch"].astype(int)
    final["lr"] = final["lr"].astype(float)
    final["ratio"] = final["lr"] / final["batch"]
    final["epochs"] = final["final_step"].astype(float) / (config.data.n_train // final["batch"])
    classes = n_classes(config.data)
    loss = final["train_loss"].astype(float)
    why = pd.Series("", index=final.index, dtype=object)
    if config.fit_acc is not None:
        why[final["train_acc"].astype(float) < config.fit_acc] = (
            f"did not fit: train accuracy < {config.fit_acc:g} after {config.epochs} epochs")
    why[loss >= math.log(classes)] = f"diverged: final train loss ≥ ln {classes}"
    # a collapsed network (dead units, constant output) keeps a finite loss just under ln C: near-chance
    # accuracy at the end of the budget marks it; a slow large-batch run is far above chance by then
    why[(final["train_acc"].astype(float) <= 2.0 / classes) & (loss < math.log(classes))] = (
        f"diverged: final train accuracy ≤ 2/{classes} (collapsed)")
    why[~np.isfinite(loss)] = "diverged: no finite train loss"
    why[final["status"] == "diverged"] = "diverged: non-finite loss"
    why[~final["status"].isin(["done", "diverged"])] = "did not finish"
    final["why"] = why
    final["excluded"] = why != ""
    final["diverged"] = why.str.startswith("diverged")
    return final


def _table(config: Config, final: pd.DataFrame) -> pd.DataFrame:
    """One row per (B, η): runs, diverged, fitted, and means ± std over the seeds kept."""
    rows = []
    for (batch, lr), part in final.groupby(["batch", "lr"], sort=True):
        kept = part[~part["excluded"]]
        row: dict[str, Any] = {"batch": int(batch), "lr": float(lr), "lr_over_batch": float(lr) / int(batch),
                               "runs": len(part), "diverged": int(part["diverged"].sum()),
                               "fitted": f"{len(kept)}/{len(part)}"}
        for name, column in (("epochs", "epochs"), ("sharpness", SHARPNESS), ("train_acc", "train_acc"),
                             ("test_acc", "test_acc"), ("gap", "gap")):
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std(kept[column])
        rows.append(row)
    return pd.DataFrame(rows)


def _rho(kept: pd.DataFrame, column: str) -> tuple[float | None, str]:
    """Spearman ρ(η/B, ``column``) over the kept runs, and a detail: how many runs and distinct η/B,
    and ρ over the per-η/B means."""
    rho = spearman(kept["ratio"], kept[column], MIN_POINTS)
    cells = kept.groupby("ratio")[column].mean()
    rho_cells = spearman(pd.Series(cells.index, dtype=float), pd.Series(cells.values, dtype=float), MIN_POINTS)
    detail = (f"{int(np.isfinite(kept[column].astype(float)).sum())} runs, {kept['ratio'].nunique()} distinct η/B; "
              f"ρ over the means per η/B: {'n/a' if rho_cells is None else f'{rho_cells:+.3f}'}")
    if rho is None:
        detail = f"fewer than {MIN_POINTS} runs kept, or a constant: {detail}"
    return rho, detail


def _not_converged(kept: pd.DataFrame, column: str) -> str:
    """Why a value computed from ``column`` cannot be trusted: the runs whose iterative estimate of it
    did not converge (a ``<column>.converged`` metric of 0 beside the value), or "" when none."""
    flag = f"{column}.converged"
    valued = kept[np.isfinite(kept[column].astype(float))] if flag in kept.columns else kept.iloc[:0]
    failed = int((valued[flag].astype(float) < 0.5).sum()) if len(valued) else 0
    what = "the Hessian eigenvalue" if column == SHARPNESS else column
    return f"{what} did not converge for {failed} of {len(valued)} runs" if failed else ""


def _excluded_note(final: pd.DataFrame) -> str:
    """Which runs the correlations left out and why, grouped by reason and (B, η) cell."""
    gone = final[final["excluded"]]
    if gone.empty:
        return "no run was excluded: none diverged, every run fitted the training set within the budget."
    parts = []
    for why, part in gone.groupby("why", sort=True):
        cells = part.groupby(["batch", "lr"]).size()
        totals = final.groupby(["batch", "lr"]).size()
        listed = ", ".join(f"B{b}/η{lr:g} ({n}/{totals[(b, lr)]})" for (b, lr), n in cells.items())
        parts.append(f"{why} — {listed}")
    return f"excluded from the correlations ({len(gone)} of {len(final)} runs): " + "; ".join(parts) + "."


def _unfitted_note(final: pd.DataFrame) -> str:
    """Both correlations with the unfitted (but not diverged) runs counted too, at the end of their
    budget: under the same epochs these are large batches at small η, so it shows what the budget
    alone does to the verdict."""
    trained = final[~final["diverged"] & (final["status"] == "done") & final["train_acc"].notna()]
    if len(trained) == int((~final["excluded"]).sum()):
        return ""
    shown = []
    for label, column in (("sharpness", SHARPNESS), ("test accuracy", "test_acc")):
        rho = spearman(trained["ratio"], trained[column], MIN_POINTS)
        shown.append(f"ρ(η/B, {label}) = {'n/a' if rho is None else f'{rho:+.3f}'}")
    return f"with the runs that did not fit counted too ({len(trained)} runs): " + ", ".join(shown) + "."


def _keskar_notes(config: Config, final: pd.DataFrame) -> list[str]:
    """The smallest vs the largest batch size (the full batch when it is n_train) at every η: means
    over the seeds kept; a side none of whose runs fitted is shown at the end of its budget."""
    small, large = config.batch_sizes[0], config.batch_sizes[-1]
    label = "full batch" if large == config.data.n_train else f"B = {large}"

    def side(batch: int, lr: float) -> str | None:
        part = final[(final["batch"] == batch) & (final["lr"] == lr)]
        kept = part[~part["excluded"]]
        if not kept.empty:
            return (f"sharpness {kept[SHARPNESS].mean():.3g}, test {kept['test_acc'].mean():.3f} "
                    f"(fitted in {kept['epochs'].mean():.0f} epochs)")
        trained = part[~part["diverged"] & part["train_acc"].notna()]
        if not trained.empty:
            return (f"not fitted after {config.epochs} epochs (train {trained['train_acc'].mean():.3f}, test "
                    f"{trained['test_acc'].mean():.3f}, sharpness {trained[SHARPNESS].mean():.3g})")
        return "diverged" if not part.empty else None

    pairs = [(lr, side(small, lr), side(large, lr)) for lr in config.lrs]
    lines = [f"η = {lr:g}: B = {small} {a} vs {label} {b}" for lr, a, b in pairs if a is not None and b is not None]
    return [f"Keskar comparison (B = {small} vs {label}, same η, budget {config.epochs} epochs): "
            + "; ".join(lines) + "."] if lines else []


def _stability_notes(config: Config, table: pd.DataFrame) -> list[str]:
    """Full-batch sharpness against the edge-of-stability value 2/η."""
    full = table[table["batch"] == config.data.n_train] if not table.empty else table
    parts = [f"η = {r.lr:g}: {r.sharpness_mean:.3g} (2/η = {2 / r.lr:.3g})"
             for r in full.itertuples() if pd.notna(r.sharpness_mean)]
    if not parts:
        return []
    return ["full-batch GD sharpness vs the edge-of-stability value 2/η: " + "; ".join(parts) + "."]


def _versus(config: Config, final: pd.DataFrame, x: str, y: str, path: Path, xlabel: str, log_y: bool,
            title: str, stability: bool = False) -> Path:
    """Mean over seeds of ``y`` against ``x`` (log axis), one colour per batch size, over the runs
    kept, with ± std bars (min–max over seeds when ``log_y``); each run a small dot; runs that did
    not fit as hollow circles (excluded)."""
    figure, (ax,) = fig.panels(1, width=6.4, height=4.4)
    for colour, batch in enumerate(config.batch_sizes):
        part = final[(final["batch"] == batch) & final[y].notna()]
        kept, unfitted = part[~part["excluded"]], part[part["excluded"] & ~part["diverged"]]
        label = f"B = {batch}" + (" (full)" if batch == config.data.n_train else "")
        fig.trend(ax, kept, x, y, colour=f"C{colour}", label=label, spread="range" if log_y else "std", dots=True)
        ax.scatter(unfitted[x], unfitted[y] * fig.scale(y), s=22, facecolors="none", edgecolors=f"C{colour}",
                   label=None if not kept.empty or unfitted.empty else label)
    if stability:
        grid = np.geomspace(min(config.lrs), max(config.lrs), 50)
        ax.plot(grid, 2.0 / grid, linestyle="--", color="grey", linewidth=1, label="2/η")
    ax.scatter([], [], s=22, facecolors="none", edgecolors="grey", label="did not fit (excluded)")
    fig.dress(ax, xlabel, fig.axis_label(y) if y != SHARPNESS else "top Hessian eigenvalue", title=title,
              log_x=True, log_y=log_y, legend=7)
    return fig.save_figure(figure, path)


def _curves(config: Config, final: pd.DataFrame, metrics: pd.DataFrame, name: str, path: Path) -> Path:
    """``name`` along training against epochs (the clock shared by all batch sizes): one panel per η,
    one line per batch size, mean ± std over seeds (runs stop when they fit, so late points average fewer)."""
    data = metrics[metrics["name"] == name].merge(final[["run_id", "batch", "lr"]], on="run_id")
    data = data.assign(epoch=data["step"] / (config.data.n_train // data["batch"]),
                       eta=data["lr"].map(lambda lr: f"η = {lr:g}"), B=data["batch"].map(lambda b: f"B = {b}"))
    order = {"eta": [f"η = {lr:g}" for lr in config.lrs], "B": [f"B = {b}" for b in config.batch_sizes]}
    return fig.curves(data, name, panel="eta", line="B", path=path, order=order, x="epoch", xlabel="epoch",
                      log_x=True, title=f"{fig.label(name)} along training (mean ± std over seeds)")


STUDY = BatchSize()
