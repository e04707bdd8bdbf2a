"""grokking: steps to each threshold per run, the table per arm, the checks and the notes.

Every run's arm is read from its stored config (never from its id). Steps to a threshold are the first
evaluation step at which the metric reaches it, so they are exact up to the evaluation cadence
(``eval_every``, stored with each run); a run that never reaches it within the budget has none (NaN). A
run that did not finish (failed, interrupted, diverged) counts as missing: a check resting on fewer than
half of an arm's planned seeds is inconclusive.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from implicitreg.studies.base import Analysis, Check, Support, final_values, fmt, mean_std, with_settings
from implicitreg.studies.grokking.fourier import TOP
from implicitreg.studies.grokking.training import ARMS, INIT_NAME, TOP_NAME, UNIT_NAME

TRAIN_FIT = 0.99  # "memorized": train accuracy ≥ 99%
TEST_FIT = 0.95  # "generalized": test accuracy ≥ 95%
DELAY = 5.0  # grokking: (steps to test ≥ 95%) / (steps to train ≥ 99%) ≥ 5
MOST = 0.5  # "most seeds": strictly more than half of the planned ones
FOURIER_MIN = 0.5  # the top-6 frequencies carry at least half of the embedding's power
SETTINGS = ("arm", "weight_decay", "init_scale", "eval_every")

GROKS = f"decay: share of seeds that grok (test ≥ {TEST_FIT:.0%} after train ≥ {TRAIN_FIT:.0%}, delay ratio ≥ {DELAY:g})"
NO_DECAY = f"no-decay (same init): share of seeds reaching test ≥ {TEST_FIT:.0%} within the budget"
SMALL = f"small-init, no decay: share of seeds reaching test ≥ {TEST_FIT:.0%}"
NORM = "decay: ℓ2 norm at the test-fit step / at the train-fit step (mean over grokking seeds)"
FOURIER = f"decay: share of the embedding's Fourier power in the top {TOP} frequencies (mean over seeds)"


def first_step(metrics: pd.DataFrame, run_id: str, name: str, level: float) -> float:
    """The first evaluation step at which ``name`` ≥ ``level`` for run ``run_id``; NaN if never."""
    part = metrics[(metrics["run_id"] == run_id) & (metrics["name"] == name)]
    reached = part[part["value"] >= level]
    return float(reached["step"].min()) if len(reached) else math.nan


def value_at(metrics: pd.DataFrame, run_id: str, name: str, step: float) -> float:
    """``name`` of run ``run_id`` at ``step``; NaN where it was not recorded."""
    if not np.isfinite(step):
        return math.nan
    part = metrics[(metrics["run_id"] == run_id) & (metrics["name"] == name) & (metrics["step"] == step)]
    return float(part["value"].iloc[0]) if len(part) else math.nan


def per_run(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run: settings, final values, steps to train ≥ 99% and to test ≥ 95%, the delay ratio,
    whether it grokked, the weight norm at both steps and their ratio, and the Fourier shares (final, init).

    A run that did not finish keeps its row with NaN values (it counts as missing)."""
    columns = ["run_id", "seed", "status", *SETTINGS, "train_acc", "test_acc", "l2_norm", TOP_NAME, INIT_NAME,
               UNIT_NAME, "train_step", "test_step", "delay", "grokked", "generalized", "norm_train", "norm_test",
               "norm_ratio"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    frame = with_settings(final_values(runs, metrics), runs, SETTINGS)
    finished = frame["status"] == "done"
    rows = []
    for row in frame.to_dict("records"):
        run = row["run_id"]
        # a run is judged when it finished with finite final accuracies; otherwise it counts as missing
        done = bool(finished[frame["run_id"] == run].iloc[0]) and all(
            np.isfinite(float(row.get(name, math.nan))) for name in ("train_acc", "test_acc"))
        train_step = first_step(metrics, run, "train_acc", TRAIN_FIT) if done else math.nan
        test_step = first_step(metrics, run, "test_acc", TEST_FIT) if done else math.nan
        row["train_step"], row["test_step"] = train_step, test_step
        row["delay"] = test_step / train_step if np.isfinite(train_step) and np.isfinite(test_step) else math.nan
        # a finished run either generalized within the budget or did not; only an unfinished one is unknown
        row["generalized"] = float(np.isfinite(test_step)) if done else math.nan
        row["grokked"] = (float(np.isfinite(row["delay"]) and test_step > train_step and row["delay"] >= DELAY)
                          if done else math.nan)
        row["norm_train"] = value_at(metrics, run, "l2_norm", train_step)
        row["norm_test"] = value_at(metrics, run, "l2_norm", test_step)
        row["norm_ratio"] = row["norm_test"] / row["norm_train"] if row["grokked"] == 1.0 else math.nan
        init = metrics[(metrics["run_id"] == run) & (metrics["name"] == INIT_NAME)]["value"]
        row[INIT_NAME] = float(init.iloc[0]) if len(init) else math.nan
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=columns)


def table(config: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """One row per arm: runs, how many memorized / generalized / grokked, mean ± std of the final values,
    of the steps to each threshold (over the seeds that reached it) and of the delay ratio."""
    rows = []
    for arm in ARMS:
        part = frame[frame["arm"] == arm] if len(frame) else frame
        row: dict[str, Any] = {"arm": arm, "runs": len(part),
                               "weight_decay": _first(part, "weight_decay"), "init_scale": _first(part, "init_scale"),
                               "memorized": f"{int(part['train_step'].notna().sum())}/{config.seeds}",
                               "generalized": f"{int((part['generalized'] == 1.0).sum())}/{config.seeds}",
                               "grokked": f"{int((part['grokked'] == 1.0).sum())}/{config.seeds}"}
        for name in ("train_acc", "test_acc", "train_step", "test_step", "delay", "norm_ratio", "l2_norm", TOP_NAME,
                     INIT_NAME, UNIT_NAME):
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std(part[name]) if len(part) else (math.nan, math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def _first(part: pd.DataFrame, column: str) -> float:
    values = part[column].dropna() if column in part else pd.Series(dtype=float)
    return float(values.iloc[0]) if len(values) else math.nan


def _share(part: pd.DataFrame, column: str, planned: int) -> tuple[float | None, Support]:
    """The share of the ``planned`` seeds whose ``column`` is 1 among the judged ones, and its support."""
    support = Support.of(part[column] if len(part) else pd.Series(dtype=float), planned, "seeds")
    judged = part[column].dropna() if len(part) else pd.Series(dtype=float)
    return (float((judged == 1.0).mean()) if len(judged) else None), support


def checks(config: Any, frame: pd.DataFrame) -> list[Check]:
    """The five checks of the claim (module docstring of :mod:`implicitreg.studies.grokking`)."""
    def arm(name: str) -> pd.DataFrame:
        return frame[frame["arm"] == name] if len(frame) else frame

    decay, plain, small = arm("decay"), arm("no-decay"), arm("small-init")
    out = []
    share, support = _share(decay, "grokked", config.seeds)
    delays = decay["delay"].dropna() if len(decay) else pd.Series(dtype=float)
    out.append(Check.at_least(GROKS, share, MOST, strict=True, support=support, detail=(
        f"{int((decay['grokked'] == 1.0).sum()) if len(decay) else 0} of {support.used} judged seeds; delay ratios "
        f"{_list(delays)}; steps to train ≥ {TRAIN_FIT:.0%}: {_list(decay.get('train_step'))}, to test ≥ "
        f"{TEST_FIT:.0%}: {_list(decay.get('test_step'))} (resolution {config.eval_every} steps)")))
    share, support = _share(plain, "generalized", config.seeds)
    out.append(Check.at_most(NO_DECAY, share, MOST, strict=True, support=support, detail=(
        f"final test accuracy {_list(plain.get('test_acc'), '.3f')}; memorized (train ≥ {TRAIN_FIT:.0%}) in "
        f"{int(plain['train_step'].notna().sum()) if len(plain) else 0} of {config.seeds} seeds")))
    share, support = _share(small, "generalized", config.seeds)
    out.append(Check.at_least(SMALL, share, MOST, strict=True, support=support, detail=(
        f"init scale {config.small_init_scale:g}; steps to test ≥ {TEST_FIT:.0%}: {_list(small.get('test_step'))}; "
        f"final test accuracy {_list(small.get('test_acc'), '.3f')}")))
    ratios = decay["norm_ratio"] if len(decay) else pd.Series(dtype=float)
    mean_ratio = mean_std(ratios)[0]
    out.append(Check.at_most(NORM, mean_ratio, 1.0, strict=True, support=Support.of(ratios, config.seeds, "seeds"),
                             detail=(f"per grokking seed: {_list(ratios, '.3f')} (norm at train fit "
                                     f"{_list(decay.get('norm_train'), '.1f')} → at test fit "
                                     f"{_list(decay.get('norm_test'), '.1f')})")))
    shares = decay[TOP_NAME] if len(decay) else pd.Series(dtype=float)
    init = mean_std(decay[INIT_NAME])[0] if len(decay) else math.nan
    out.append(Check.at_least(FOURIER, mean_std(shares)[0], FOURIER_MIN,
                              support=Support.of(shares, config.seeds, "seeds"), detail=(
        f"per seed {_list(shares, '.3f')}; at initialization {fmt(init if np.isfinite(init) else None, '.3f')}; "
        f"an even spread over the {config.p // 2} frequencies would give {TOP / (config.p // 2):.3f}")))
    return out


def _list(values: pd.Series | None, spec: str = "g") -> str:
    """``[a, b, n/a]`` of a column's values (n/a: NaN: never reached, or a missing run)."""
    if values is None or len(values) == 0:
        return "[]"
    return "[" + ", ".join("n/a" if not np.isfinite(v) else format(v, spec) for v in values.astype(float)) + "]"


def notes(config: Any, frame: pd.DataFrame) -> list[str]:
    """What ran and how the numbers are read, and where the claim did not reproduce, which part."""
    lines = [
        f"modular addition mod {config.p}, train fraction {config.train_fraction:g}; two-layer network of width "
        f"{config.width} ({'quadratic activation, no biases' if config.activation == 'quadratic' else 'ReLU'}) on the concatenated one-hot vectors of a and b; full-batch AdamW (lr {config.lr:g}, betas "
        f"{tuple(config.betas)}), {config.steps} steps; arms: decay (weight decay {config.weight_decay:g}, init scale "
        f"{config.init_scale:g}), no-decay (init scale {config.init_scale:g}), small-init (init scale "
        f"{config.small_init_scale:g}, no decay); {config.seeds} seeds each.",
        f"steps to a threshold: the first evaluation (every {config.eval_every} steps) at which train accuracy ≥ "
        f"{TRAIN_FIT:.0%} or test accuracy ≥ {TEST_FIT:.0%}; delay ratio = their quotient; ℓ2 norm: all "
        "parameters.",
        f"Fourier share: the first-layer weight column of each input token, DFT over the p tokens of each operand, "
        f"power summed over hidden units and both operands, frequencies 1 … {config.p // 2}; the share of the "
        f"top {TOP}.",
    ]
    if len(frame):
        norms = ", ".join(f"{arm} {fmt(_mean(frame, arm, 'l2_norm'), '.1f')}" for arm in ARMS)
        shares = ", ".join(f"{arm} {fmt(_mean(frame, arm, TOP_NAME), '.3f')}" for arm in ARMS)
        units = ", ".join(f"{arm} {fmt(_mean(frame, arm, UNIT_NAME), '.3f')}" for arm in ARMS)
        lines.append(f"at the last step, mean over seeds: ℓ2 norm {norms}; top-{TOP} Fourier share {shares} (at "
                     f"initialization {fmt(_mean(frame, None, INIT_NAME), '.3f')}); reported, not checked: each hidden "
                     f"unit's share of its power in its own strongest frequency (power-weighted mean over units: "
                     f"Gromov's solution gives each unit one frequency, the units together many) {units}.")
    return lines


def _mean(frame: pd.DataFrame, arm: str | None, column: str) -> float | None:
    """Mean of ``column`` over an arm's seeds (all runs for None); None where no run has it."""
    part = frame if arm is None else frame[frame["arm"] == arm]
    value = mean_std(part[column])[0] if len(part) else math.nan
    return value if np.isfinite(value) else None


def analyze(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame) -> Analysis:
    frame = per_run(runs, metrics)
    found = checks(config, frame)
    lines = notes(config, frame)
    failed = [c.name for c in found if c.passed is False]
    if failed:
        lines.append("did not reproduce at this size and budget: " + "; ".join(failed) + ".")
    return Analysis(table(config, frame), found, lines)
