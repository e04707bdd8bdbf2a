"""Loss landscapes: 1-D and 2-D slices, the linear path between two solutions, the PCA plane of a
training trajectory — every grid point evaluated as one member of a population.

Every landscape here is a set of points θ(c) = origin + Σₖ cₖ·dₖ in parameter space (a slice: the
model plus filter-normalized directions; the linear path: θ_a + t·(θ_b − θ_a); a PCA plane: the
last snapshot plus the two top components). The points are stacked, a chunk at a time, into
parameters [B, ...] and evaluated in one vmapped ``torch.func.functional_call`` on shared data —
the population path of :mod:`implicitreg.measures` — so a 51 × 51 surface costs about as much as a
few dozen forward passes of a batch of 2,601 models, not 2,601 Python-level passes. A chunk holds at
most ``budget`` evaluated samples (points × rows) and :data:`PARAM_BUDGET` stacked numbers; rows are
split when one point's data alone exceeds the budget (the loss is then the row-weighted mean of the
chunks' losses, so ``loss_fn`` must be a mean over rows, as ``F.cross_entropy`` and ``F.mse_loss``
are by default).

Filter normalization (Li, Xu, Taylor, Studer & Goldstein 2018, §4): a random Gaussian direction d
has each filter d_{i,j} (the slice along a weight's first axis: a convolution's output channel, the
weights into one neuron of a linear layer) rescaled to the norm of the same filter of the weights,
d_{i,j} ← d_{i,j}/‖d_{i,j}‖ · ‖θ_{i,j}‖, so that a slice does not change when a ReLU network is
reparametrized by per-layer scales. Biases and BatchNorm's weight and bias (every parameter with
≤ 1 dimension) get a zero direction by default (``ignore="biasbn"``), as in every example of the
authors' code (``--xignore biasbn``); ``ignore=None`` takes their code's other choice, the direction
equal to the parameter itself. Buffers (BatchNorm's running statistics) are held at the model's
values along slices (their ``--dir_type weights``) and interpolated with the parameters along the
linear path between two models (their ``--dir_type states``: two models' statistics differ).

References:
    Li, Xu, Taylor, Studer & Goldstein (2018), Visualizing the loss landscape of neural nets, NeurIPS.
    Goodfellow, Vinyals & Saxe (2015), Qualitatively characterizing neural network optimization problems.
    Frankle, Dziugaite, Roy & Carbin (2020), Linear mode connectivity and the lottery ticket hypothesis.
    Entezari, Sedghi, Saukh & Neyshabur (2022), The role of permutation invariance in linear mode
    connectivity of neural networks.
"""

from __future__ import annotations

from implicitreg.landscape.layout import BUDGET
from implicitreg.landscape.points import evaluate_points
from implicitreg.landscape.directions import normalize_direction, random_direction
from implicitreg.landscape.slices import Slice1D, Slice2D, slice_1d, slice_2d
from implicitreg.landscape.paths import Interpolation, barrier_heights, interpolate
from implicitreg.landscape.trajectory import TrajectoryPlane, principal_components, trajectory_pca

__all__ = ["BUDGET", "Interpolation", "Slice1D", "Slice2D", "TrajectoryPlane", "barrier_heights", "evaluate_points", "interpolate", "normalize_direction", "principal_components", "random_direction", "slice_1d", "slice_2d", "trajectory_pca"]
