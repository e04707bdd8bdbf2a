"""Studies as plugins: a package that declares an entry point in the group ``implicitreg.studies``
is listed (marked with its package) and runs like a built-in study; a broken one is listed with its
error on one line, refused by ``run`` with that line, and no obstacle to the others.

The example of docs/writing-a-study.md (examples/plugin) is installed as a real package into a
temporary directory and used by fresh interpreters; the error paths use fake entry points.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import assert_user_error, cli_env, invoke_cli
from implicitreg.config import ConfigError
from implicitreg.studies import ENTRY_POINT_GROUP, STUDIES, all_studies, get_study, plugins
from implicitreg.studies.min_norm import STUDY as MIN_NORM

# the module (implicitreg.studies, the attribute of the package, is the dict of built-in studies)
registry = importlib.import_module("implicitreg.studies")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugin"
NAME, PACKAGE = "gd-min-norm", "implicitreg-gd-min-norm 0.1.0"


# -- the example, installed as a package ---------------------------------------------------------

@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """examples/plugin installed (pip, no index, no build isolation) into a fresh target directory;
    the copy keeps pip's build files out of the source tree."""
    pytest.importorskip("setuptools", minversion="70.1", reason="building the example needs setuptools >= 70.1 "
                                                                "(pip install -e '.[test]' brings it)")
    root = tmp_path_factory.mktemp("plugin")
    source = root / "source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__",
                                                                   ".pytest_cache"))
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, capture_output=True, text=True,
                   timeout=300)
    return target


def with_plugin(args: list[str], target: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python ARGS`` in a fresh interpreter that finds the installed example on PYTHONPATH."""
    env = {**cli_env(), "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_the_installed_example_is_listed_runs_and_resumes(installed, tmp_path):
    # importing the package loads no plugin: discovery waits for the first use
    probe = with_plugin(["-c", "import sys, implicitreg, implicitreg.cli; "
                               "registry = sys.modules['implicitreg.studies']; "
                               "print(registry._PLUGINS is None, 'gd_min_norm' in sys.modules)"], installed)
    assert probe.stdout.split() == ["True", "False"], probe.stderr

    listed = with_plugin(["-m", "implicitreg", "list"], installed)
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith(NAME))
    assert f"(plugin: {PACKAGE})" in line and "minimum-norm" in line
    assert all(any(other.startswith(name) for other in listed.stdout.splitlines()) for name in STUDIES)

    out = tmp_path / "out"
    ran = with_plugin(["-m", "implicitreg", "run", NAME, "--quick", "--threads", "1", "--out", str(out)], installed)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["study"] == NAME and summary["verdict"] == "pass", summary["checks"]
    assert summary["runs"]["planned"] == summary["runs"]["done"] == 4  # quick: 2 ratios × 1 seed × 2 starts
    assert [c["passed"] for c in summary["checks"]] == [True, True, True]
    assert (out / "report.html").stat().st_size > 0 and (out / "results.sqlite").is_file()
    assert (out / "figures" / "gd_min_norm.png").is_file()

    # the same store and report machinery: --resume finds nothing left to do and rebuilds the report
    (out / "report.html").unlink()
    again = with_plugin(["-m", "implicitreg", "run", NAME, "--quick", "--threads", "1", "--resume", "--out",
                         str(out)], installed)
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "summary.json").read_text())["checks"] == summary["checks"]
    assert (out / "report.html").is_file()


def test_the_examples_own_tests_pass_against_the_installed_package(installed):
    """The test docs/writing-a-study.md walks through, run as a plugin author runs it."""
    source = installed.parent / "source"
    result = with_plugin(["-m", "pytest", "-q", "-p", "no:cacheprovider"], installed, cwd=source)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "5 passed" in result.stdout


# -- fake entry points ---------------------------------------------------------------------------

@dataclass
class Dist:
    name: str
    version: str


@dataclass
class FakeEntryPoint:
    """What the registry reads of an ``importlib.metadata.EntryPoint``: name, value, dist, load()."""

    name: str
    target: Any  # what load() returns, or an exception it raises
    package: str = "fakepkg"
    value: str = "fakepkg.study:STUDY"
    loads: int = 0

    @property
    def dist(self) -> Dist:
        return Dist(self.package, "0.1")

    def load(self) -> Any:
        self.loads += 1
        if isinstance(self.target, BaseException):
            raise self.target
        return self.target


class Renamed:
    """A built-in study under another name (the plugin that works)."""

    def __init__(self, study: Any, name: str):
        self._study, self.name = study, name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._study, attribute)


class Without(Renamed):
    """A study missing some attributes."""

    def __init__(self, study: Any, name: str, *missing: str):
        super().__init__(study, name)
        self._missing = missing

    def __getattr__(self, attribute: str) -> Any:
        if attribute in self._missing:
            raise AttributeError(attribute)
        return super().__getattr__(attribute)


class BadQuick(Renamed):
    def defaults(self, quick: bool) -> dict:
        return {"n": 0} if quick else {}


class AsClass:
    """A study class (no arguments): the entry point may name it instead of an instance."""

    def __init__(self):
        self._study = Renamed(MIN_NORM, "as-class")

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._study, attribute)


@pytest.fixture
def fake_plugins(monkeypatch):
    """Install fake entry points for one test (``install(*points)``); the registry forgets them after."""
    monkeypatch.setattr(registry, "_PLUGINS", None)

    def install(*points: FakeEntryPoint) -> None:
        def entry_points(**params):
            assert params == {"group": ENTRY_POINT_GROUP}, params
            return list(points)

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
        registry.plugins(refresh=True)

    return install


def test_a_broken_plugin_is_listed_with_its_error_and_the_others_still_work(fake_plugins, tmp_path):
    good = FakeEntryPoint("good-study", Renamed(MIN_NORM, "good-study"), package="goodpkg")
    broken = FakeEntryPoint("broken-study", ModuleNotFoundError("No module named 'missing_dependency'"),
                            package="brokenpkg", value="brokenpkg.study:STUDY")
    fake_plugins(broken, good)

    listed = invoke_cli(["list"])
    assert listed.returncode == 0, listed
    lines = listed.stdout.splitlines()
    error = next(line for line in lines if line.startswith("broken-study"))
    assert error == ("broken-study (plugin: brokenpkg 0.1): cannot be loaded (brokenpkg.study:STUDY): "
                     "ModuleNotFoundError: No module named 'missing_dependency'")
    assert any(line.startswith("good-study — ") and line.endswith("(plugin: goodpkg 0.1)") for line in lines)
    assert sum(line.startswith(tuple(STUDIES)) for line in lines) >= len(STUDIES)

    out = tmp_path / "out"
    assert_user_error(invoke_cli(["run", "broken-study", "--out", out]), [error], out)
    assert get_study("good-study").name == "good-study"
    assert "good-study" in all_studies() and "broken-study" not in all_studies()
    described = invoke_cli(["config", "good-study", "--json"])  # a plugin's settings, like a built-in's
    assert described.returncode == 0 and {row["key"] for row in json.loads(described.stdout)} >= {"n", "d"}


@pytest.mark.parametrize("target,name,expected", [
    (Without(MIN_NORM, "no-analysis", "analyze", "figures"), "no-analysis", "it has no analyze, figures"),
    (Without(MIN_NORM, "no-claim", "claim"), "no-claim", "it has no claim"),
    (Without(MIN_NORM, "no-config", "Config"), "no-config", "it has no Config"),
    (Renamed(MIN_NORM, "other-name"), "its-entry-point", "its name is 'other-name', the entry point's is "
                                                         "'its-entry-point'"),
    (BadQuick(MIN_NORM, "bad-quick"), "bad-quick", "its --quick configuration does not validate (n:"),
    (SyntaxError("invalid syntax (study.py, line 3)"), "syntax", "cannot be loaded (fakepkg.study:STUDY): "
                                                                 "SyntaxError: invalid syntax"),
    (SystemExit(1), "exits", "cannot be loaded (fakepkg.study:STUDY): SystemExit: 1"),
    (MIN_NORM, "all", "cannot be a study's"),
], ids=["no-analysis", "no-claim", "no-config", "name-mismatch", "bad-quick", "syntax-error", "sys-exit",
        "reserved-name"])
def test_an_invalid_plugin_says_why_on_one_line(fake_plugins, target, name, expected):
    fake_plugins(FakeEntryPoint(name, target))
    (plugin,) = plugins()
    assert plugin.study is None and expected in plugin.error, plugin.error
    with pytest.raises(ConfigError) as err:
        get_study(name)
    assert str(err.value) == plugin.problem_line() and "\n" not in str(err.value)


def test_a_name_clash_with_a_built_in_study_never_loads_the_plugin(fake_plugins):
    clash = FakeEntryPoint("min-norm", Renamed(MIN_NORM, "min-norm"))
    fake_plugins(clash)
    (plugin,) = plugins()
    assert "name clash: a built-in study is called 'min-norm'" in plugin.error and clash.loads == 0
    assert get_study("min-norm") is MIN_NORM


def test_two_packages_with_one_name_the_first_usable_keeps_it(fake_plugins):
    first = FakeEntryPoint("twin", Renamed(MIN_NORM, "twin"), package="first")
    second = FakeEntryPoint("twin", Renamed(MIN_NORM, "twin"), package="second")
    fake_plugins(first, second)
    listed = plugins()
    assert [p.package for p in listed] == ["first 0.1", "second 0.1"]
    assert listed[0].study is not None and "name clash: first 0.1 also declares" in listed[1].error
    assert get_study("twin") is listed[0].study


def test_an_entry_point_may_name_a_study_class(fake_plugins):
    fake_plugins(FakeEntryPoint("as-class", AsClass))
    assert get_study("as-class").name == "as-class"


def test_run_all_runs_the_built_in_studies_only(fake_plugins, tmp_path):
    from implicitreg.runner import RunOptions, prepare_all

    fake_plugins(FakeEntryPoint("good-study", Renamed(MIN_NORM, "good-study")))
    prepared = prepare_all(RunOptions("all", quick=True, out=tmp_path / "all"))
    assert sorted(p.study.name for p in prepared) == sorted(STUDIES)
    assert "built-in" in invoke_cli(["run", "--help"]).stdout


def test_the_guide_quotes_the_example_as_it_is():
    """Every code block of docs/writing-a-study.md that names an example file on its first line
    holds lines of that file only (``# ...`` marks what it leaves out)."""
    guide = EXAMPLE.parents[1] / "docs" / "writing-a-study.md"
    blocks = [block.split("\n", 1) for block in guide.read_text(encoding="utf-8").split("```")[1::2]]
    quoted = 0
    for header, body in blocks:
        first, *lines = body.splitlines()
        if not first.startswith("# examples/plugin/"):
            continue
        source = EXAMPLE.parents[1] / first.removeprefix("# ")
        have = {line.strip() for line in source.read_text(encoding="utf-8").splitlines()}
        missing = [line for line in lines if line.strip() not in ("", "# ...") and line.strip() not in have]
        assert not missing, f"{source.name}: not in the file: {missing}"
        quoted += 1
    assert quoted >= 6
