"""double-descent, part (b): one-hidden-layer MLPs of growing width trained on noisy labels.

The per-run final values (widths are plan tags), the per-width table, the three checks and the
figures. ``config`` is the study's :class:`~implicitreg.studies.double_descent.Config`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from implicitreg.report import figures as fig
from implicitreg.studies.base import Check, Support, final_values, mean_std, tagged, weakest

MLP_ARM = "mlp"
FIT_MIN = 0.99  # "fits its noisy training labels": mean train accuracy over seeds
PEAK_FACTOR = 2.0  # peak width within a factor 2 of the interpolation threshold
SE_MULTIPLIER = 2.0  # the widest network tests better than the peak by > 2 standard errors


def _mlp_params(width: int, input_dim: int = 40, classes: int = 10) -> int:
    return input_dim * width + width + width * classes + classes


MLP_METRICS = ("train_acc", "test_acc", "test_loss", "l2_norm")


def mlp_final(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per MLP run with its width (a plan tag) and final metrics; NaN for a run that diverged,
    did not finish or was never evaluated (its last records are not those of a finished run)."""
    mlp = runs[runs["arm"] == MLP_ARM]
    if mlp.empty:
        return pd.DataFrame(columns=["run_id", "width", "status", *MLP_METRICS])
    final = tagged(final_values(mlp, metrics[metrics["run_id"].isin(mlp["run_id"])]), mlp, required=("width",))
    return final.reindex(columns=list(dict.fromkeys([*final.columns, *MLP_METRICS])))


def mlp_table(config: Any, final: pd.DataFrame) -> pd.DataFrame:
    """One row per width that has runs: means over seeds, and how many seeds each mean rests on."""
    rows = []
    for width, part in final.groupby("width", sort=True):
        params = _mlp_params(int(width))
        row: dict[str, Any] = {"part": MLP_ARM, "size": int(width), "size/n": params / config.n_train,
                               "runs": int(np.isfinite(part["test_acc"].astype(float)).sum())}
        for name in ("train_acc", "test_acc", "test_loss"):
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std(part[name])
        row["norm_mean"], row["norm_std"] = mean_std(part["l2_norm"])
        rows.append(row)
    return pd.DataFrame(rows)


def mlp_context(table: pd.DataFrame) -> list[str]:
    """The test cross-entropy over widths: reported, not judged (the claim is about the error)."""
    if table.empty:
        return []
    loss = table.set_index("size")["test_loss_mean"]
    return [f"(b) not judged: test cross-entropy lowest at width {int(loss.idxmin())} ({loss.min():.3f}), "
            f"highest at width {int(loss.idxmax())} ({loss.max():.3f}); at the widest width {loss.iloc[-1]:.3f}."]


MLP_CHECKS = ("mlp: mean train accuracy (noisy labels) at the widest width",
              "mlp: test-error peak width / interpolation-threshold width",
              "mlp: test error at the peak minus at the widest width")


def mlp_checks(config: Any, table: pd.DataFrame, final: pd.DataFrame) -> list[Check]:
    """The three MLP checks from the per-width means (``table``) and the per-run values (``final``:
    how many of the ``config.seeds`` planned per width each rests on). The peak is only located when
    every width has its test error from at least half its seeds; the interpolation threshold when
    every width up to it has its train accuracy."""
    fits_name, peak_name, drop_name = MLP_CHECKS

    def support(width: int, column: str) -> Support:
        return Support.of(final.loc[final["width"] == width, column], config.seeds, "seeds")

    widest = config.widths[-1]
    by_width = table.set_index("size").reindex(config.widths) if len(table) else pd.DataFrame(
        index=config.widths, columns=["train_acc_mean", "test_acc_mean", "test_acc_std"], dtype=float)
    checks = [Check.at_least(fits_name, by_width.loc[widest, "train_acc_mean"], FIT_MIN, detail=f"width {widest}",
                             support=support(widest, "train_acc"))]
    test_supports = {w: support(w, "test_acc") for w in config.widths}
    lost = [w for w, s in test_supports.items() if not s.enough]
    if lost:
        why = f"widths {lost} have test accuracy from fewer than half their seeds: the peak cannot be located"
        return checks + [Check.within(peak_name, None, 1 / PEAK_FACTOR, PEAK_FACTOR, detail=why),
                         Check.at_least(drop_name, None, 0.0, strict=True, detail=why,
                                        support=weakest(*test_supports.values()))]
    error = 1.0 - by_width["test_acc_mean"].to_numpy(dtype=float)
    widths = list(config.widths)
    peak = int(np.argmax(error))
    peak_detail = f"test error by width: {dict(zip(widths, np.round(error, 4).tolist()))}"
    threshold, unknown = None, None
    for width in widths:
        accuracy = by_width.loc[width, "train_acc_mean"]
        if not support(width, "train_acc").enough or pd.isna(accuracy):
            unknown = width
            break
        if accuracy >= FIT_MIN:
            threshold = width
            break
    if unknown is not None:
        checks.append(Check.within(peak_name, None, 1 / PEAK_FACTOR, PEAK_FACTOR, detail=(
            f"width {unknown} has train accuracy from {support(unknown, 'train_acc').describe()}: the interpolation "
            "threshold is unknown; " + peak_detail)))
    elif threshold is None:
        checks.append(Check.within(peak_name, None, 1 / PEAK_FACTOR, PEAK_FACTOR, detail=(
            f"no width reached mean train accuracy {FIT_MIN}: no interpolation threshold; " + peak_detail)))
    else:
        checks.append(Check.within(peak_name, widths[peak] / threshold, 1 / PEAK_FACTOR, PEAK_FACTOR,
                                   support=weakest(*test_supports.values()), detail=(
                                       f"peak at width {widths[peak]}, interpolation threshold at width {threshold}; "
                                       + peak_detail)))
    # the second descent: the widest network tests better than the peak by more than 2 SE of the
    # difference of the two seed means (one seed: no spread, so any drop counts)
    used = {w: test_supports[w].used for w in (widths[peak], widest)}
    se = math.sqrt(sum(np.nan_to_num(float(by_width.loc[w, "test_acc_std"])) ** 2 / used[w] for w in used))
    drop = float(error[peak] - error[-1])  # 0 when the peak is the widest width: no second descent
    seeds = min(used.values())
    checks.append(Check.at_least(
        drop_name, drop, SE_MULTIPLIER * se, strict=True,
        support=weakest(test_supports[widths[peak]], test_supports[widest]),
        detail=(f"the test error peaks at the widest width ({widest}): no second descent" if peak == len(widths) - 1
                else f"peak width {widths[peak]}: {error[peak]:.4f}; widest width {widest}: {error[-1]:.4f}; "
                f"{SE_MULTIPLIER:g}·SE = {SE_MULTIPLIER * se:.4f} over {seeds} seed(s)"
                + (" (one seed: no spread, so any drop counts)" if seeds < 2 else ""))))
    return checks


def mlp_figure(config: Any, final: pd.DataFrame, path: Path) -> Path:
    """Train and test error (mean ± std over seeds) and test loss against the hidden width."""
    errors = final.assign(train_err=1.0 - final["train_acc"].astype(float),
                          test_err=1.0 - final["test_acc"].astype(float))
    figure, axes = fig.subplots(1, 2, figsize=(10.5, 3.8))
    fig.trend(axes[0], errors, "width", "train_err", colour="C1", label="train error (noisy labels)")
    fig.trend(axes[0], errors, "width", "test_err", colour="C0", label="test error (clean labels)")
    fig.trend(axes[1], errors, "width", "test_loss", colour="C0")
    fig.dress(axes[0], "hidden width", "error", log_x=2)
    fig.dress(axes[1], "hidden width", "test cross-entropy", log_x=2, log_y=True, legend=None)
    figure.suptitle(f"MLP, {config.label_noise:.0%} label noise, n = {config.n_train}, "
                    f"{config.train.max_steps} steps")
    return fig.save_figure(figure, path)


def mlp_curves(config: Any, final: pd.DataFrame, metrics: pd.DataFrame, path: Path) -> Path:
    """Test accuracy along training, one line per width (mean ± std over seeds)."""
    labelled = metrics.merge(final[["run_id", "width"]], on="run_id")
    labelled = labelled.assign(model="mlp", width=labelled["width"].map(lambda w: f"w{int(w)}"))
    order = {"model": ["mlp"], "width": [f"w{w}" for w in config.widths]}
    return fig.curves(labelled, "test_acc", panel="model", line="width", order=order, path=path,
                      title="test accuracy along training (clean test labels)")
