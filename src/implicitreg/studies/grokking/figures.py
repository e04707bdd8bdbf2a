"""grokking: accuracy along training per arm (the delay), the weight norm (its fall), the embedding's spectrum."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from implicitreg.report import kinds
from implicitreg.studies.grokking.analysis import TEST_FIT, TRAIN_FIT, per_run
from implicitreg.studies.grokking.fourier import TOP
from implicitreg.studies.grokking.training import ARMS, TOP_NAME, UNIT_NAME, power_name

COLOURS = {"decay": "C0", "no-decay": "C3", "small-init": "C2"}


def _runs_of(frame: pd.DataFrame, arm: str) -> list[str]:
    part = frame[frame["arm"] == arm].sort_values("seed") if len(frame) else frame
    return list(part["run_id"]) if len(part) else []


def accuracy(frame: pd.DataFrame, metrics: pd.DataFrame, path: Path) -> Path:
    """Per arm: train (dashed) and test (solid) accuracy of each seed against the step (log), with the two
    thresholds; the decay arm's steps to each threshold (first seed) as vertical lines."""
    panels = []
    for arm in ARMS:
        panel = kinds.Panel(title=f"{arm}: train (dashed) and test (solid)", xlabel="step", ylabel="accuracy (%)",
                            xscale="log")
        for i, run in enumerate(_runs_of(frame, arm)):
            for name, style in (("train_acc", "--"), ("test_acc", "-")):
                steps, values = kinds.series(metrics, run, name)
                label = (f"seed {i}" if name == "test_acc" else None) if i < 4 else None
                panel.curves.append(kinds.Curve(steps, 100 * values, label, {"color": f"C{i}", "linestyle": style}))
        panel.lines += [kinds.Line(100 * TRAIN_FIT, f"train {TRAIN_FIT:.0%}", {"linestyle": ":"}),
                        kinds.Line(100 * TEST_FIT, f"test {TEST_FIT:.0%}")]
        part = frame[frame["arm"] == arm] if len(frame) else frame
        if len(part) and np.isfinite(part["train_step"].iloc[0]):
            panel.lines.append(kinds.Line(float(part["train_step"].iloc[0]), "seed 0: train fit",
                                          {"color": "black", "linestyle": ":"}, axis="x"))
        if len(part) and np.isfinite(part["test_step"].iloc[0]):
            panel.lines.append(kinds.Line(float(part["test_step"].iloc[0]), "seed 0: test fit",
                                          {"color": "black", "linestyle": "-."}, axis="x"))
        panels.append(panel)
    return kinds.draw(panels, path, size=(5.0, 3.8))


def norm_and_spectrum(config: Any, frame: pd.DataFrame, metrics: pd.DataFrame, path: Path) -> Path:
    """Left: the ℓ2 norm against the step, every run coloured by arm, the decay runs' train- and test-fit
    points marked. Middle: the top-6 Fourier share against the step. Right: the final power per frequency of
    the first seed of each arm (normalized to sum 1)."""
    norm = kinds.Panel(title="ℓ2 norm of the weights; ○ train fit, ● test fit", xlabel="step",
                       ylabel="parameter ℓ2 norm", xscale="log")
    share = kinds.Panel(title=f"embedding: top-{TOP} share (solid), per-unit top-1 share (dashed)",
                        xlabel="step", ylabel="share of Fourier power", xscale="log")
    spectrum = kinds.Panel(title="final embedding spectrum (seed 0 of each arm)", xlabel="frequency k",
                           ylabel="share of power")
    for arm in ARMS:
        colour = COLOURS[arm]
        for i, run in enumerate(_runs_of(frame, arm)):
            label = arm if i == 0 else None
            steps, values = kinds.series(metrics, run, "l2_norm")
            norm.curves.append(kinds.Curve(steps, values, label, {"color": colour, "alpha": 0.8}))
            steps, values = kinds.series(metrics, run, TOP_NAME)
            share.curves.append(kinds.Curve(steps, values, label, {"color": colour, "alpha": 0.8}))
            steps, values = kinds.series(metrics, run, UNIT_NAME)
            share.curves.append(kinds.Curve(steps, values, None, {"color": colour, "alpha": 0.8, "linestyle": "--"}))
            row = frame[frame["run_id"] == run].iloc[0]
            if arm == "decay":
                for key, marker in (("train_step", "o"), ("test_step", "o")):
                    step = row[key]
                    at = "norm_train" if key == "train_step" else "norm_test"
                    if np.isfinite(step) and np.isfinite(row[at]):
                        norm.curves.append(kinds.Curve([step], [row[at]], None, {
                            "color": "black", "marker": marker, "linestyle": "none",
                            "fillstyle": "none" if key == "train_step" else "full"}))
            if i == 0:
                powers = np.array([_final(metrics, run, power_name(k)) for k in range(1, config.p // 2 + 1)])
                if np.isfinite(powers).all() and powers.sum() > 0:
                    spectrum.curves.append(kinds.Curve(np.arange(1, len(powers) + 1), powers / powers.sum(), arm,
                                                       {"color": colour, "marker": ".", "linewidth": 1}))
    share.lines.append(kinds.Line(TOP / max(1, config.p // 2), f"even spread ({TOP}/{config.p // 2})"))
    return kinds.draw([norm, share, spectrum], path, size=(5.0, 3.8))


def _final(metrics: pd.DataFrame, run: str, name: str) -> float:
    steps, values = kinds.series(metrics, run, name, min_step=0)
    return float(values[-1]) if len(values) else np.nan


def draw_all(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame, directory: Path) -> list[Path]:
    frame = per_run(runs, metrics)
    return [accuracy(frame, metrics, directory / "accuracy.png"),
            norm_and_spectrum(config, frame, metrics, directory / "norm_and_spectrum.png")]
