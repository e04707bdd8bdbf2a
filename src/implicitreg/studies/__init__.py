"""The registry of studies: ``implicitreg list`` shows them, ``implicitreg run NAME`` runs one.

:data:`STUDIES` holds the built-in studies (``implicitreg run all`` runs these). Installed packages
add their own through the ``implicitreg.studies`` entry-point group (``my-study =
"mypkg.study:STUDY"``, see ``docs/writing-a-study.md``); they are discovered on first use of
:func:`get_study`, :func:`all_studies` or :func:`plugins`, never at import, so that importing the
package runs no third-party code. A plugin that cannot be imported, or is no valid study, is kept
with its error: listed on one line, refused by :func:`get_study` with that line, and no obstacle to
the other studies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from implicitreg.config import ConfigError, build_config
from implicitreg.studies.base import Analysis, Check, Study
from implicitreg.studies.adaptive_eos import STUDY as ADAPTIVE_EOS
from implicitreg.studies.batch_size import STUDY as BATCH_SIZE
from implicitreg.studies.catapult import STUDY as CATAPULT
from implicitreg.studies.diagonal_net import STUDY as DIAGONAL_NET
from implicitreg.studies.double_descent import STUDY as DOUBLE_DESCENT
from implicitreg.studies.edge_of_stability import STUDY as EDGE_OF_STABILITY
from implicitreg.studies.explicit_vs_implicit import STUDY as EXPLICIT_VS_IMPLICIT
from implicitreg.studies.grokking import STUDY as GROKKING
from implicitreg.studies.igr import STUDY as IGR
from implicitreg.studies.inductive_bias import STUDY as INDUCTIVE_BIAS
from implicitreg.studies.label_noise import STUDY as LABEL_NOISE
from implicitreg.studies.lazy_vs_rich import STUDY as LAZY_VS_RICH
from implicitreg.studies.matrix_factorization import STUDY as MATRIX_FACTORIZATION
from implicitreg.studies.max_margin import STUDY as MAX_MARGIN
from implicitreg.studies.measure_ranking import STUDY as MEASURE_RANKING
from implicitreg.studies.min_norm import STUDY as MIN_NORM
from implicitreg.studies.random_labels import STUDY as RANDOM_LABELS
from implicitreg.studies.sweep import STUDY as SWEEP
from implicitreg.studies.tracked import STUDY as TRACKED
from implicitreg.studies.width import STUDY as WIDTH

STUDIES: dict[str, Study] = {study.name: study for study in (ADAPTIVE_EOS, BATCH_SIZE, CATAPULT, DIAGONAL_NET, DOUBLE_DESCENT, EDGE_OF_STABILITY, EXPLICIT_VS_IMPLICIT, GROKKING, IGR, INDUCTIVE_BIAS, LABEL_NOISE, LAZY_VS_RICH, MATRIX_FACTORIZATION, MAX_MARGIN, MEASURE_RANKING, MIN_NORM, RANDOM_LABELS, WIDTH)}
"""The built-in studies, by name."""

OPEN: dict[str, Study] = {TRACKED.name: TRACKED, SWEEP.name: SWEEP}
"""Open experiments whose runs come from elsewhere (``implicitreg.Tracker``): ``show`` and ``report`` read
their directories through :func:`get_study`; ``list`` and ``run all`` leave them out."""

ENTRY_POINT_GROUP = "implicitreg.studies"
# `run all` is the command's own word; a study name becomes a directory name (runs/NAME-TIME)
RESERVED = ("all",)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
REQUIRED_METHODS = ("defaults", "plan", "analyze", "figures")


@dataclass(frozen=True)
class Plugin:
    """A study an installed package declares in the ``implicitreg.studies`` entry-point group.

    Attributes:
        name: the entry point's name, the one ``implicitreg run NAME`` takes.
        package: the distribution that declares it, ``"name version"``.
        study: the loaded, checked study object; None when it is not usable.
        error: why it is not usable, in one line ("" when it is).
    """

    name: str
    package: str
    study: Any = None
    error: str = ""

    @property
    def origin(self) -> str:
        """``plugin: mypkg 0.1`` — what ``implicitreg list`` prints beside the study."""
        return f"plugin: {self.package}"

    def problem_line(self) -> str:
        """The one line ``implicitreg list`` shows for a broken plugin and ``run NAME`` exits with."""
        return f"{self.name} ({self.origin}): {self.error}"


_PLUGINS: list[Plugin] | None = None  # discovered once, on first use


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _entry_points() -> list[Any]:
    """The entry points of the group (imported here: importlib.metadata scans sys.path on first use)."""
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def _package(entry_point: Any) -> str:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return "unknown package"
    return f"{dist.name} {dist.version}"


def check_study(study: Any, name: str) -> str:
    """Why ``study`` cannot serve as the study ``name`` ("" when it can): the attributes and methods
    the driver uses (:class:`~implicitreg.studies.base.Study`), a ``Config`` that builds from its
    defaults, full and ``--quick``, and a name that is the entry point's own."""
    missing = [attr for attr in ("name", "claim", "paper", "Config") if not hasattr(study, attr)]
    missing += [method for method in REQUIRED_METHODS if not callable(getattr(study, method, None))]
    if missing:
        return f"not a valid study: it has no {', '.join(missing)} (see docs/writing-a-study.md)"
    if study.name != name:
        return (f"not a valid study: its name is {study.name!r}, the entry point's is {name!r}; they must agree "
                "(the name is stored with the results and read back by show and report)")
    if not isinstance(study.claim, (str, type(None))) or not isinstance(study.paper, str):
        return (f"not a valid study: claim must be a string (or None: an experiment with no verdict) and paper a "
                f"string, got {type(study.claim).__name__} and {type(study.paper).__name__}")
    if not (isinstance(study.Config, type) and issubclass(study.Config, BaseModel)):
        return f"not a valid study: Config must be a pydantic model class, got {study.Config!r}"
    if callable(getattr(study, "solve", None)) and not callable(getattr(study, "problem", None)):
        return "not a valid study: it has solve() but no problem() (a solved study needs both)"
    minutes = getattr(study, "minutes", None)
    if minutes is not None and not (isinstance(minutes, tuple) and len(minutes) == 2
                                    and all(isinstance(m, (int, float)) and m > 0 for m in minutes)):
        return f"not a valid study: minutes must be (quick, full), two positive numbers, got {minutes!r}"
    for quick in (False, True):
        try:
            defaults = study.defaults(quick)
            if not isinstance(defaults, dict):
                return f"not a valid study: defaults({quick}) must return a dict, got {type(defaults).__name__}"
            build_config(study.Config, defaults, {})
        except Exception as err:  # the plugin's own code: any failure makes it unusable, not the command
            flag = " --quick" if quick else ""
            return f"not a valid study: its{flag} configuration does not validate ({_one_line(err)})"
    return ""


def _load(entry_point: Any, taken: dict[str, Plugin]) -> Plugin:
    """Load and check one entry point; every failure becomes the plugin's one-line error."""
    name, package = entry_point.name, _package(entry_point)
    if name in STUDIES or name in OPEN:
        return Plugin(name, package, error=f"name clash: a built-in study is called {name!r}; rename the entry point")
    if name in taken:
        return Plugin(name, package, error=f"name clash: {taken[name].package} also declares a study {name!r}")
    if name in RESERVED or not NAME.fullmatch(name):
        return Plugin(name, package, error=f"the name {name!r} cannot be a study's: expected letters, digits, '.', "
                                           "'_' or '-' (not starting with one of the last three), and not 'all'")
    try:
        study = entry_point.load()
        if isinstance(study, type):  # the entry point names a class: its instance is the study
            study = study()
    except (Exception, SystemExit) as err:  # a plugin's import must not take the command down
        return Plugin(name, package, error=f"cannot be loaded ({entry_point.value}): "
                                           f"{type(err).__name__}: {_one_line(err)}")
    try:
        problem = check_study(study, name)
    except Exception as err:  # an attribute of the plugin's that raises when read
        problem = f"not a valid study: checking it raised {type(err).__name__}: {_one_line(err)}"
    return Plugin(name, package, None if problem else study, problem)


def plugins(refresh: bool = False) -> list[Plugin]:
    """Every study an installed package declares, sorted by name, loaded and checked on the first
    call (``refresh``: look again, e.g. after installing one in this process). Of two packages that
    declare the same name, the first on ``sys.path`` keeps it; the other is listed with the clash."""
    global _PLUGINS
    if _PLUGINS is None or refresh:
        found: dict[str, Plugin] = {}
        listed = []
        for entry_point in sorted(_entry_points(), key=lambda ep: ep.name):
            plugin = _load(entry_point, found)
            listed.append(plugin)
            if plugin.study is not None:
                found.setdefault(plugin.name, plugin)
        _PLUGINS = listed
    return list(_PLUGINS)


def _plugin(name: str) -> Plugin | None:
    """The plugin ``implicitreg run NAME`` takes: the usable one of that name, else the first listed."""
    named = [p for p in plugins() if p.name == name]
    return next((p for p in named if p.study is not None), named[0] if named else None)


def all_studies() -> dict[str, Study]:
    """The built-in studies, then every usable plugin's, by name."""
    usable = {p.name: p.study for p in plugins() if p.study is not None}
    return {**STUDIES, **{name: study for name, study in usable.items() if name not in STUDIES}}


def study_to_run(name: str) -> Study:
    """The study ``implicitreg run NAME`` starts: as :func:`get_study`, but an open experiment (a sweep,
    a tracked loop) is refused with a :class:`ConfigError` that says where its runs come from."""
    study = get_study(name)
    if name in OPEN:
        raise ConfigError(f"{name}: `implicitreg run` does not start it; {study.started_by}")
    return study


def get_study(name: str) -> Study:
    """The study called ``name``, built-in or plugin; :class:`ConfigError` otherwise: the plugin's
    one-line error if it is broken, else the names known."""
    if name in STUDIES or name in OPEN:
        return STUDIES.get(name) or OPEN[name]
    plugin = _plugin(name)
    if plugin is None:
        raise ConfigError(f"unknown study {name!r}; expected one of: {', '.join(sorted(all_studies()))}")
    if plugin.study is None:
        raise ConfigError(plugin.problem_line())
    return plugin.study


__all__ = ["Analysis", "Check", "ENTRY_POINT_GROUP", "OPEN", "Plugin", "STUDIES", "Study", "all_studies", "check_study",
           "get_study", "study_to_run", "plugins"]
