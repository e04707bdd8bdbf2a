"""Complexity measures on any PyTorch model or population.

Every measure takes a plain ``nn.Module`` (→ 0-d tensor) or a
:class:`~implicitreg.population.Population` (→ [P]), plus data and a loss where it needs them.
:data:`REGISTRY` holds each measure's metadata; :mod:`implicitreg.measures.basic` the
evaluation every run tracks.
"""

from implicitreg.measures.basic import accuracy_and_loss, evaluate_population
from implicitreg.measures.core import REGISTRY, MeasureInfo, Stacked, register, stacked
from implicitreg.measures.size import distance_from_init, l1_norm, l2_norm, param_count
from implicitreg.measures.tracking import compute

__all__ = ["REGISTRY", "MeasureInfo", "Stacked", "accuracy_and_loss", "compute", "distance_from_init",
           "evaluate_population",
           "l1_norm", "l2_norm", "param_count", "register", "stacked"]
