"""Random ReLU features and their minimum-norm least-squares fit (the double-descent model).

Belkin, Hsu, Ma & Mandal (2019), "Reconciling modern machine-learning practice and the classical
bias–variance trade-off", Section 3: a random-features model ``f(x) = φ(x)ᵀa`` with ``N`` fixed
random features and coefficients ``a`` fitted by minimum-norm least squares. Below ``N = n``
(training points) the fit is the ordinary least-squares solution; from ``N = n`` on it
interpolates, and among the interpolants it is the one of least ``‖a‖₂`` — the solution gradient
descent from ``a = 0`` converges to. Its test risk peaks at ``N ≈ n`` and falls again beyond.

The fit *is* the reference here: it comes from ``numpy.linalg.lstsq`` (LAPACK ``gelsd``, an SVD
solver) in float64, with no hand-written solver in between.
"""

from __future__ import annotations

import numpy as np

from implicitreg.seeding import stream_seed


def draw_relu_features(input_dim: int, n_features: int, seed: int,
                       bias_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Draw the fixed first layer of a random ReLU features model.

    Args:
        input_dim: d, the input dimension.
        n_features: N, the number of features.
        seed: the feature seed (its own stream, independent of data and training seeds).
        bias_scale: standard deviation of the biases.

    Returns:
        ``(weights, bias)``: (d, N) float64 with entries ~ N(0, 1/d), so that ``xᵀw`` has unit
        scale for inputs of unit scale, and (N,) float64 with entries ~ N(0, bias_scale²).
        The first ``N'`` columns of a draw with ``N`` features are the draw with ``N'`` features
        of the same seed: a sweep over N nests its feature sets.
    """
    if input_dim < 1 or n_features < 1:
        raise ValueError(f"random features: input_dim and n_features must be >= 1, got {input_dim}, {n_features}")
    # weights and biases from separate streams, drawn feature by feature (rows of (N, d)), so a
    # draw of N' < N features is exactly the first N' features of the larger draw
    weights = np.random.default_rng(stream_seed(seed, "relu-features/weights")).standard_normal(
        (n_features, input_dim)).T / np.sqrt(input_dim)
    bias = np.random.default_rng(stream_seed(seed, "relu-features/bias")).standard_normal(n_features) * bias_scale
    return np.ascontiguousarray(weights), bias


def relu_features(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``φ(x) = ReLU(xW + b) / √N``.

    Args:
        x: (n, d) inputs. weights: (d, N). bias: (N,).

    Returns:
        (n, N) float64 features. The 1/√N keeps ``‖φ(x)‖`` of order one whatever N, so the
        coefficient norms of different N are comparable (it does not change the fitted predictor).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != weights.shape[0]:
        raise ValueError(f"relu_features: expected inputs of shape (n, {weights.shape[0]}), got {x.shape}")
    return np.maximum(x @ weights + bias, 0.0) / np.sqrt(weights.shape[1])


def min_norm_fit(features: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Minimum-ℓ2-norm least-squares coefficients ``a = Φ⁺Y``.

    Args:
        features: (n, N) feature matrix Φ.
        targets: (n, k) targets Y (one-hot classes here), or (n,).

    Returns:
        (N, k) float64 (or (N,)): the least-squares solution of least norm, by
        ``numpy.linalg.lstsq`` with LAPACK's default cutoff (``rcond=None``: singular values below
        machine precision × max(n, N) × σ_max are treated as zero). Near ``N = n`` the smallest
        singular values of Φ are small but far above that cutoff, so they are kept — that is what
        makes the norm of ``a`` and the test risk blow up at the interpolation threshold.
    """
    features = np.asarray(features, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if features.ndim != 2 or targets.shape[0] != features.shape[0]:
        raise ValueError(f"min_norm_fit: expected features (n, N) and targets (n, …) with the same n, got "
                         f"{features.shape} and {targets.shape}")
    coefficients, *_ = np.linalg.lstsq(features, targets, rcond=None)
    return coefficients
