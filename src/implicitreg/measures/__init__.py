"""Complexity measures on any PyTorch model or population.

Every measure takes a plain ``nn.Module`` (→ 0-d tensor) or a population (→ [P]: a
:class:`~implicitreg.population.Population`, or any :class:`PopulationLike`), plus data and a loss
where it needs them. :data:`REGISTRY` holds each measure's metadata. Measures are pure functions and
import no training code: the evaluation every run gets and the hooks that track measures along
training are the engine's (:mod:`implicitreg.hooks`). Iterative measures
(``REGISTRY[name].iterative``) give their per-member convergence with ``with_convergence=True``
(an :class:`Estimate`), as does ``compute(..., with_convergence=True)``; tracked, it is stored as
the metric ``NAME.converged``.
"""

from implicitreg.measures.core import REGISTRY, Estimate, MeasureInfo, PopulationLike, Stacked, register, stacked
from implicitreg.measures.curvature import (
    CurvatureOperator,
    EigResult,
    HessianOperator,
    LayerCurvature,
    TraceResult,
    hessian_eigenvalues,
    hessian_operator,
    hessian_trace,
    hessian_trace_hutchpp,
    layer_hessians,
    hessian_vector_product,
    top_hessian_eigenvalue,
)
from implicitreg.measures.density import DensityResult, hessian_density
from implicitreg.measures.flatness import (
    FlatnessResult,
    pac_bayes_bound_terms,
    pac_bayes_flatness,
    pac_bayes_init,
    pac_bayes_mag_flatness,
    pac_bayes_mag_init,
    pac_bayes_mag_orig,
    pac_bayes_orig,
    pac_bayes_sigma,
    pac_bayes_sigma_result,
)
from implicitreg.measures.gradients import (
    GradientStats,
    gradient_diversity,
    gradient_noise_scale,
    gradient_snr,
    gradient_statistics,
    per_sample_gradients,
)
from implicitreg.measures.layers import (
    fold_batchnorm,
    frobenius_norms,
    frobenius_product,
    spectral_norms,
    spectral_product,
    sum_of_frobenius,
    sum_of_spectral,
)
from implicitreg.measures.ggn import (
    OutlierResult,
    empirical_fisher_trace,
    fisher_eigenvalues,
    fisher_operator,
    fisher_trace,
    ggn_eigenvalues,
    ggn_operator,
    ggn_outliers,
    ggn_trace,
    mc_fisher_trace,
    top_ggn_eigenvalue,
)
from implicitreg.measures.margins import margin, normalized_margin, spectral_complexity
from implicitreg.measures.ntk import empirical_ntk, kernel_distance, kernel_movement
from implicitreg.measures.path_norm import path_norm
from implicitreg.measures.rank import (
    effective_rank,
    effective_ranks,
    end_to_end_matrix,
    nuclear_norm,
    nuclear_norms,
    stable_rank,
    stable_ranks,
)
from implicitreg.measures.sharpness import epsilon_sharpness
from implicitreg.measures.spectra import (
    WeightSpectrum,
    alpha_weighted,
    log_spectral_norm,
    mean_alpha,
    n_spikes,
    weight_spectra,
    weight_spectrum,
)
from implicitreg.measures.size import distance_from_init, l1_norm, l2_norm, param_count
from implicitreg.measures.tracking import compute

__all__ = ["REGISTRY", "Estimate", "FlatnessResult", "MeasureInfo", "PopulationLike", "Stacked", "compute",
           "distance_from_init", "epsilon_sharpness", "fold_batchnorm", "pac_bayes_bound_terms",
           "pac_bayes_flatness", "pac_bayes_init", "pac_bayes_mag_flatness", "pac_bayes_mag_init", "pac_bayes_mag_orig",
           "pac_bayes_orig", "pac_bayes_sigma", "pac_bayes_sigma_result", "frobenius_norms", "frobenius_product",
           "spectral_norms", "spectral_product", "sum_of_frobenius", "sum_of_spectral", "margin", "normalized_margin",
           "spectral_complexity", "path_norm", "effective_rank", "effective_ranks", "end_to_end_matrix",
           "nuclear_norm", "nuclear_norms", "stable_rank", "stable_ranks", "EigResult", "TraceResult",
           "hessian_eigenvalues", "hessian_trace", "hessian_vector_product", "top_hessian_eigenvalue",
           "CurvatureOperator", "HessianOperator", "LayerCurvature", "hessian_operator", "layer_hessians", "hessian_trace_hutchpp", "DensityResult",
           "hessian_density", "OutlierResult", "empirical_fisher_trace", "fisher_eigenvalues", "fisher_operator",
           "fisher_trace", "ggn_eigenvalues", "ggn_operator", "ggn_outliers", "ggn_trace", "mc_fisher_trace",
           "top_ggn_eigenvalue", "WeightSpectrum", "alpha_weighted", "log_spectral_norm", "mean_alpha", "n_spikes",
           "weight_spectra", "weight_spectrum", "GradientStats", "gradient_diversity", "gradient_noise_scale",
           "gradient_snr", "gradient_statistics", "per_sample_gradients", "empirical_ntk", "kernel_distance",
           "kernel_movement",
           "l1_norm", "l2_norm", "param_count", "register", "stacked"]
