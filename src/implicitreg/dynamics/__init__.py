"""Exact small-problem solvers shared by the theory studies (DESIGN.md, "Layers").

- :mod:`~implicitreg.dynamics.descent`: the full-batch gradient-descent driver (loss-and-gradient
  callable, in-place update rule, tolerance and divergence stops, recording grid, observer);
- :mod:`~implicitreg.dynamics.grid`: log-spaced recording steps;
- :mod:`~implicitreg.dynamics.squared_loss`: GD, SGD, Adam and AdaGrad on ‖Xw − y‖²/(2n) (min-norm);
- :mod:`~implicitreg.dynamics.logistic`: GD and normalized GD on the logistic loss (max-margin);
- :mod:`~implicitreg.dynamics.diagonal_net`: GD on β = u⊙u − v⊙v for many α at once (diagonal-net);
- :mod:`~implicitreg.dynamics.factorization`: GD on W = W_N⋯W_1 (matrix-factorization);
- :mod:`~implicitreg.dynamics.flat`: small models on one flat parameter vector, GD and the all-orders
  SGD epoch on their squared loss (igr, against :mod:`~implicitreg.references.modified_flows`);
- :mod:`~implicitreg.dynamics.network`: a seeded float64 MLP, ½·MSE, its Lanczos sharpness, and full-batch
  descent on it with any update rule and a measurement every k steps (edge-of-stability);
- :mod:`~implicitreg.dynamics.adaptive`: heavy-ball momentum and Adam as update rules for that loop (as
  torch.optim steps them), their stability thresholds, and Lanczos on the preconditioned Hessian P⁻¹H
  (adaptive-eos);
- :mod:`~implicitreg.dynamics.two_layer`: wide two-layer networks in the NTK parametrization (linear or ReLU),
  a population trained by full-batch GD at once with its NTK's top eigenvalue, and bisection on η·λ₀ for
  the largest stable rate (catapult);
- :mod:`~implicitreg.dynamics.label_noise`: full-batch or minibatch GD with fresh label noise each step
  (annealed to none), on diagonal networks and two-layer ReLU nets, with their Hessian traces in closed
  form (label-noise);
- :mod:`~implicitreg.dynamics.lazy`: the centred, α-scaled model α·(h(θ) − h(θ₀)) and its linearization,
  trained by GD with step η₀/α², and T steps of kernel GD in closed form (lazy-vs-rich).

This package imports nothing above its layer (no study, runner or report).
"""

from implicitreg.dynamics.descent import Descent, descend, gd_update
from implicitreg.dynamics.grid import log_steps, recording_steps

__all__ = ["Descent", "descend", "gd_update", "log_steps", "recording_steps"]
