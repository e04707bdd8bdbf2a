"""How well a complexity measure predicts generalization: Kendall's τ between a measure and the
generalization gap over many trained models, and Jiang et al.'s granulated τ (Ψ), which only
compares models that differ in one hyperparameter.

References:
    Kendall (1945). The treatment of ties in ranking problems. Biometrika. (τ-b)
    Jiang, Neyshabur, Mobahi, Krishnan, Bengio (2020). Fantastic generalization measures and
    where to find them. ICLR. (Section 4: ranking correlation and granulated ranking correlation Ψ.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


def _as_vector(values, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensors, on any device
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d sequence of numbers, got shape {array.shape}")
    return array


def kendall_tau(measure_values, gen_gaps) -> float:
    """Kendall's τ-b between a measure and the generalization gap over models.

    τ-b (ties in either variable handled as in ``scipy.stats.kendalltau``, which computes it).
    Positive τ: models with a larger measure have a larger gap (the measure predicts the gap
    when lower means simpler). NaN when fewer than two models, when either input is constant,
    or when any value is NaN.

    Args:
        measure_values: [M] one value per model (array, list or tensor).
        gen_gaps: [M] the generalization gap of the same models.

    Returns:
        τ in [−1, 1], or NaN.
    """
    a, b = _as_vector(measure_values, "measure_values"), _as_vector(gen_gaps, "gen_gaps")
    if a.shape != b.shape:
        raise ValueError(f"measure_values and gen_gaps must have the same length, got {len(a)} and {len(b)}")
    if len(a) < 2 or np.isnan(a).any() or np.isnan(b).any() or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    from scipy import stats  # lazy: scipy.optimize, stats and integrate cost `import implicitreg` 0.8 s
    return float(stats.kendalltau(a, b)[0])


def spearman(x: pd.Series, y: pd.Series, min_points: int = 2) -> float | None:
    """Spearman's ρ: the correlation of average ranks (ties share the mean of their ranks), over
    the pairs where both values are finite; None with fewer than ``min_points`` such pairs or when
    either side is constant.

    Args:
        x, y: [M] paired values (index-aligned Series).
    Returns:
        ρ in [−1, 1], or None.
    """
    x, y = pd.Series(x, dtype=float), pd.Series(y, dtype=float)
    ok = np.isfinite(x.to_numpy()) & np.isfinite(y.to_numpy())
    x, y = x[ok], y[ok]
    if len(x) < max(min_points, 2) or x.nunique() < 2 or y.nunique() < 2:
        return None
    return float(np.corrcoef(x.rank().to_numpy(), y.rank().to_numpy())[0, 1])


@dataclass(frozen=True)
class GranulatedTau:
    """Jiang et al.'s granulated Kendall coefficient of one measure.

    Attributes:
        psi: Ψ, the mean of ``per_hyperparameter`` over the hyperparameters that have a value
            (NaN if none has).
        per_hyperparameter: ψᵢ for each hyperparameter i: the mean τ over the groups of models that
            share every other hyperparameter (NaN if no group has a defined τ).
        n_groups: per hyperparameter, the number of groups whose τ entered the mean (groups of
            one model, or with a constant measure or gap, have no τ and are left out).
    """

    psi: float
    per_hyperparameter: dict[str, float]
    n_groups: dict[str, int]


def granulated_kendall_tau(frame: pd.DataFrame, measure: str, gap: str,
                           hyperparameters: Sequence[str]) -> GranulatedTau:
    """Jiang et al. (2020)'s granulated τ: Ψ = (1/n) Σᵢ ψᵢ over the n hyperparameters, with

    ψᵢ = mean over the groups of rows that agree on every hyperparameter except the i-th of
    τ(measure, gap) within the group (:func:`kendall_tau`).

    Rows that also agree on the i-th hyperparameter (e.g. seeds not listed as a hyperparameter)
    stay in the same group. With a single hyperparameter the one group is the whole frame, and
    Ψ = ψ is the plain τ.

    Args:
        frame: one row per model.
        measure, gap: column names of the measure and of the generalization gap.
        hyperparameters: column names of the hyperparameters that were varied.

    Returns:
        :class:`GranulatedTau` (Ψ, ψ per hyperparameter, groups counted).
    """
    hyperparameters = list(hyperparameters)
    if not hyperparameters:
        raise ValueError("hyperparameters: expected at least one column name, got none")
    if len(set(hyperparameters)) != len(hyperparameters):
        raise ValueError(f"hyperparameters: duplicate names in {hyperparameters}")
    missing = [c for c in [measure, gap, *hyperparameters] if c not in frame.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the frame; it has {list(frame.columns)}")
    per: dict[str, float] = {}
    counts: dict[str, int] = {}
    for hp in hyperparameters:
        others = [h for h in hyperparameters if h != hp]
        groups = frame.groupby(others, dropna=False, sort=False) if others else [((), frame)]
        taus = [kendall_tau(group[measure].to_numpy(), group[gap].to_numpy()) for _, group in groups]
        defined = [t for t in taus if not math.isnan(t)]
        per[hp] = float(np.mean(defined)) if defined else math.nan
        counts[hp] = len(defined)
    values = [v for v in per.values() if not math.isnan(v)]
    return GranulatedTau(float(np.mean(values)) if values else math.nan, per, counts)


def granulated_psi(values: np.ndarray, gaps: np.ndarray, groups: dict[str, np.ndarray],
                   rows: np.ndarray | None = None) -> np.ndarray:
    """Ψ of several measures at once, vectorized: the same number as :func:`granulated_kendall_tau`.

    τ-b of a group is Σ sx·sy / √(Σ sx² · Σ sy²) over its ordered pairs, with sx, sy the signs of
    the pairwise differences (Σ sx² counts the pairs not tied in the measure); models whose
    measure is NaN drop out of that measure's pairs.

    Args:
        values: [K, M] K measures over M models (NaN where a measure is undefined).
        gaps: [M] generalization gaps.
        groups: per hyperparameter, [M] integer codes of the groups of models that agree on
            every other hyperparameter (:func:`group_codes`).
        rows: [M'] model indices to use, with repeats (a bootstrap resample); all models if None.
    Returns:
        [K] Ψ per measure (NaN where no hyperparameter has a defined ψ).
    """
    rows = np.arange(values.shape[1]) if rows is None else rows
    x, y = values[:, rows], gaps[rows]
    valid = np.isfinite(x)
    pair = valid[:, :, None] & valid[:, None, :]  # [K, m, m]
    sx = np.where(pair, np.sign(np.nan_to_num(x)[:, :, None] - np.nan_to_num(x)[:, None, :]), 0.0)
    sy = np.where(pair, np.sign(y[:, None] - y[None, :])[None], 0.0)
    psi = []
    for codes in groups.values():
        code = codes[rows]
        onehot = (code[:, None] == np.unique(code)[None, :]).astype(float)  # [m, G]
        # per-group sums over pairs inside the group: Σ_ij A_ig Z_ij A_jg
        def by_group(z: np.ndarray) -> np.ndarray:
            return np.einsum("kig,ig->kg", z @ onehot, onehot)
        concordance, untied_x, untied_y = by_group(sx * sy), by_group(sx * sx), by_group(sy * sy)
        defined = (untied_x > 0) & (untied_y > 0)
        tau = np.where(defined, concordance / np.sqrt(np.where(defined, untied_x * untied_y, 1.0)), np.nan)
        with np.errstate(invalid="ignore"):
            psi.append(np.where(defined.any(1), np.nansum(tau, 1) / np.maximum(defined.sum(1), 1), np.nan))
    stacked = np.stack(psi)  # [H, K]
    counts = np.isfinite(stacked).sum(0)
    return np.where(counts > 0, np.nansum(stacked, 0) / np.maximum(counts, 1), np.nan)


def group_codes(frame: pd.DataFrame, hyperparameters: Sequence[str]) -> dict[str, np.ndarray]:
    """Per hyperparameter, [M] integer codes of the groups of rows that agree on every other one
    (one group when it is the only hyperparameter), as :func:`granulated_kendall_tau` forms them."""
    codes = {}
    for hp in hyperparameters:
        others = [h for h in hyperparameters if h != hp]
        codes[hp] = (frame.groupby(others, dropna=False, sort=False).ngroup().to_numpy() if others
                     else np.zeros(len(frame), dtype=int))
    return codes
