"""The registry of studies: ``implicitreg list`` shows them, ``implicitreg run NAME`` runs one."""

from __future__ import annotations

from implicitreg.config import ConfigError
from implicitreg.studies.base import Analysis, Check, Study
from implicitreg.studies.batch_size import STUDY as BATCH_SIZE
from implicitreg.studies.diagonal_net import STUDY as DIAGONAL_NET
from implicitreg.studies.double_descent import STUDY as DOUBLE_DESCENT
from implicitreg.studies.edge_of_stability import STUDY as EDGE_OF_STABILITY
from implicitreg.studies.explicit_vs_implicit import STUDY as EXPLICIT_VS_IMPLICIT
from implicitreg.studies.igr import STUDY as IGR
from implicitreg.studies.inductive_bias import STUDY as INDUCTIVE_BIAS
from implicitreg.studies.matrix_factorization import STUDY as MATRIX_FACTORIZATION
from implicitreg.studies.max_margin import STUDY as MAX_MARGIN
from implicitreg.studies.measure_ranking import STUDY as MEASURE_RANKING
from implicitreg.studies.min_norm import STUDY as MIN_NORM
from implicitreg.studies.random_labels import STUDY as RANDOM_LABELS
from implicitreg.studies.width import STUDY as WIDTH

STUDIES: dict[str, Study] = {study.name: study for study in (BATCH_SIZE, DIAGONAL_NET, DOUBLE_DESCENT, EDGE_OF_STABILITY, EXPLICIT_VS_IMPLICIT, IGR, INDUCTIVE_BIAS, MATRIX_FACTORIZATION, MAX_MARGIN, MEASURE_RANKING, MIN_NORM, RANDOM_LABELS, WIDTH)}


def get_study(name: str) -> Study:
    """The study called ``name``; :class:`ConfigError` listing the known ones otherwise."""
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; expected one of: {', '.join(sorted(STUDIES))}")
    return STUDIES[name]


__all__ = ["Analysis", "Check", "STUDIES", "Study", "get_study"]
