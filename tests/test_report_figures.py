"""Figures show their claim at a glance, with units: explicit-vs-implicit's by-arm figure draws each
arm's test accuracy in % on an axis zoomed onto the arms (not forced to 0) with the "within 5
points of the best explicit arm" band and chance; the width figures have titles and readable axis
labels."""

import math

import numpy as np
import pandas as pd
from PIL import Image

from implicitreg.report import figures as fig
from implicitreg.studies import explicit_vs_implicit as evi
from implicitreg.studies import width

TEST = {"none": 0.571, "wd": 0.573, "dropout": 0.621, "wd+dropout": 0.624, "random_labels": 0.108}


def evi_runs(models=("mlp", "cnn"), seeds=2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stored runs and metrics as the store returns them: every arm of every model, two evaluations."""
    runs, metrics = [], []
    for model in models:
        for arm in evi.ARMS:
            for seed in range(seeds):
                run_id = f"{model}/{arm}/seed{seed}"
                runs.append({"run_id": run_id, "study": "explicit-vs-implicit", "arm": arm, "seed": seed,
                             "config": {"member": {"tags": {"model": model}}}, "provenance": {},
                             "status": "done", "final_step": 100,
                             "target_step": 100 if arm in ("none", "random_labels") else None})
                test = TEST[arm] + 0.002 * (seed - 0.5)
                train = 1.0 if arm in ("none", "wd", "random_labels") else 0.95
                for step, scale in ((50, 0.8), (100, 1.0)):
                    values = {"train_acc": train * scale, "test_acc": test * scale, "gap": (train - test) * scale,
                              "l2_norm": 20.0 + seed, "dist_init": 15.0 + seed}
                    metrics += [{"run_id": run_id, "step": step, "name": n, "value": v} for n, v in values.items()]
    return pd.DataFrame(runs), pd.DataFrame(metrics)


def test_explicit_vs_implicit_by_arm_figure_is_produced(tmp_path):
    config = evi.Config(seeds=2)
    runs, metrics = evi_runs()
    paths = evi.STUDY.figures(config, runs, metrics, tmp_path)
    names = [p.name for p in paths]
    assert "by_arm.png" in names and "norms_by_arm.png" in names
    with Image.open(tmp_path / "by_arm.png") as image:
        assert image.format == "PNG" and image.width > 800 and image.height > 600  # two model rows


def test_by_arm_plots_test_accuracy_with_the_band_and_chance():
    runs, metrics = evi_runs(models=("mlp",))
    final = evi.with_model(evi.final_values(runs, metrics), runs)
    figure = evi._by_arm(final, ["mlp"], chance=0.1, seeds=2)
    left, right = figure.axes
    assert left.get_ylabel() == "test accuracy (%)"
    low, high = left.get_ylim()
    assert 50 < low < 57.1 and 62.4 < high < 70  # zoomed onto the arms, not forced to 0
    # the band: from 5 points under the best explicit arm (wd+dropout, 62.4%) up
    band = [p for p in left.patches if "within 5 points" in str(p.get_label())]
    assert len(band) == 1
    assert math.isclose(_band_edges(band[0])[0], 62.4 - 5, abs_tol=0.05)
    assert "5.3 points below the best explicit arm" in left.get_title()
    assert left.title.get_color() == "tab:red"  # outside the band: the claim fails for this model
    # the right panel: the fit thresholds and the chance band
    assert right.get_ylabel() == "accuracy (%)" and right.get_ylim() == (0, 105)
    assert any("chance ± 3 points" == p.get_label() for p in right.patches)
    assert any(line.get_label() == "chance (10%)" and math.isclose(line.get_ydata()[0], 10.0)
               for line in right.lines)


def _band_edges(patch) -> list[float]:
    """The lower and upper y of an ``axhspan`` (a Rectangle, or a Polygon before matplotlib 3.9)."""
    if hasattr(patch, "get_height"):
        return [patch.get_y(), patch.get_y() + patch.get_height()]
    ys = np.asarray(patch.get_xy())[:, 1]
    return [float(ys.min()), float(ys.max())]


def width_table() -> pd.DataFrame:
    rows = []
    for w, train, test, path_norm in ((128, 0.968, 0.573, 42.0), (256, 0.9994, 0.586, 37.0),
                                      (2048, 1.0, 0.597, 15.5)):
        rows.append({"width": w, "params": width._params(width.Config(), w), "runs": 2,
                     "train_acc_mean": train, "train_acc_std": 0.004, "test_acc_mean": test, "test_acc_std": 0.004,
                     "l2_norm_mean": 30.0 + w / 200, "l2_norm_std": 0.1, "path_norm_mean": path_norm,
                     "path_norm_std": 0.1, "spectral_complexity_mean": 3700.0 * (w / 128) ** 0.5,
                     "spectral_complexity_std": 10.0})
    return pd.DataFrame(rows)


def test_width_accuracy_figure_states_the_comparison():
    figure = width._accuracy_vs_width(width_table())
    train, test = figure.axes
    assert train.get_ylabel() == "train accuracy (%)" and test.get_ylabel() == "test accuracy (%)"
    assert train.get_xlabel() == test.get_xlabel() == "hidden width (log scale)"
    assert [t.get_text() for t in test.get_xticklabels()] == ["128", "256", "2048"]
    assert "threshold" in train.get_title()
    assert "widest 59.7% vs 58.6% at the threshold" in test.get_title()
    assert "+1.1 points" in test.get_title()
    assert "interpolation threshold" in figure._suptitle.get_text()
    legend = [t.get_text() for t in test.get_legend().get_texts()]
    assert "interpolation threshold (width 256)" in legend


def test_width_measure_figure_has_titles_and_readable_labels():
    figure = width._measures_vs_width(width_table(), ["l2_norm", "path_norm", "spectral_complexity"])
    labels = [ax.get_ylabel() for ax in figure.axes]
    assert labels == ["parameter ℓ2 norm", "path norm", "spectral complexity"]
    assert all(ax.get_title() for ax in figure.axes)
    assert "path norm: ×0.37 from width 128 to 2048" == figure.axes[1].get_title()
    assert "parameters grow ×16" in figure._suptitle.get_text()
    ticks = [t.get_text() for t in figure.axes[1].get_yticklabels(minor=True) + figure.axes[1].get_yticklabels()]
    assert not any("times" in t or "^" in t for t in ticks)  # plain numbers, not 3×10¹


def test_labels_have_units_and_measures_read_as_words():
    assert fig.axis_label("test_acc") == "test accuracy (%)"
    assert fig.axis_label("gap") == "generalization gap (% points)"
    assert fig.axis_label("path_norm") == "path norm"
    assert fig.label("spectral_complexity") == "spectral complexity"
    assert fig.label("some_new_measure") == "some new measure"



def test_by_arm_with_a_lost_arm_says_the_comparison_is_undecided(tmp_path):
    runs, metrics = evi_runs(models=("mlp",))
    runs.loc[runs["arm"] == "dropout", "status"] = "failed"  # its values are blanked: no test accuracy
    final = evi.with_model(evi.final_values(runs, metrics), runs)
    left, _ = evi._by_arm(final, ["mlp"], chance=0.1, seeds=2).axes
    assert "no test accuracy for dropout: the comparison is undecided" in left.get_title()
    assert [p.get_label() for p in left.patches if "within" in str(p.get_label())] == [
        "within 5 points of the best explicit arm with a value (wd+dropout, 62.4%)"]
    runs["status"] = "failed"  # nothing at all: the figures still draw, saying so
    paths = evi.STUDY.figures(evi.Config(models=["mlp"], seeds=2), runs, metrics, tmp_path)
    assert (tmp_path / "by_arm.png") in paths


def test_width_figures_with_a_widest_width_without_value():
    table = width_table()
    table.loc[2, ["test_acc_mean", "path_norm_mean"]] = float("nan")
    figure = width._accuracy_vs_width(table)
    assert "has no value" in figure.axes[1].get_title()
    measures = width._measures_vs_width(table, ["path_norm"])
    assert measures.axes[0].get_title() == "path norm: ×0.88 from width 128 to 256"
    none_fits = table.assign(train_acc_mean=0.5)
    assert "no threshold" in width._accuracy_vs_width(none_fits).axes[1].get_title()


def test_every_registered_measure_has_a_readable_axis_name():
    from implicitreg.measures import REGISTRY
    from implicitreg.report.figures import LABELS

    assert sorted(set(REGISTRY) - set(LABELS)) == []
