"""The ``implicitreg`` command end to end: list, run, show, report, and what users get wrong.

User mistakes exit with code 2 and one line on stderr that names the field and what is allowed,
with no traceback and nothing written. A tiny successful sweep writes the store, summary.json,
a self-contained report and figures.

A subprocess costs ~3 s of imports, so the matrix of mistakes runs in-process (typer's CliRunner)
and two of them, with the tiny sweep, also run as real subprocesses, two at a time.
"""

import base64
import json
import re
from pathlib import Path

import pytest
import torch

from conftest import TINY, CliResult, read_store, run_cli_many, invoke_cli, assert_user_error
from implicitreg.studies.explicit_vs_implicit import ARMS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE = ["run", "explicit-vs-implicit", "--quick"]


def error_cases(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (arguments, substrings the one-line error must contain). Each --out is a fresh path."""
    empty = root / "empty"  # an existing directory with no results in it
    out = lambda name: ["--out", str(root / name)]  # noqa: E731
    cases = {
        "unknown-study": (["run", "no-such-study", *out("unknown-study")],
                          ["unknown study", "'no-such-study'", "explicit-vs-implicit"]),
        "unknown-key": ([*TINY, "--set", "foo=1", *out("unknown-key")],
                        ["foo: unknown key", "Allowed keys", "train.lr", "seeds"]),
        # not TINY: its --seeds 1 would override --set seeds (the option wins over --set)
        "wrong-type": ([*BASE, "--set", "seeds=abc", *out("wrong-type")], ["seeds:", "integer", "'abc'"]),
        "negative-lr": ([*TINY, "--set", "train.lr=-1", *out("negative-lr")], ["train.lr:", "greater than 0"]),
        "dropout-one": ([*TINY, "--set", "dropout=1", *out("dropout-one")], ["dropout:", "less than 1"]),
        "set-without-equals": ([*TINY, "--set", "train.lr", *out("set-without-equals")],
                               ["--set", "KEY=VALUE", "'train.lr'"]),
        "out-missing-parent": ([*TINY, "--out", str(root / "missing" / "sub")],
                               ["--out", str(root / "missing"), "does not exist"]),
        "out-is-a-file": ([*TINY, "--out", str(root / "a-file")], ["--out", "not a directory"]),
        "out-not-empty": ([*TINY, "--out", str(root / "not-empty")], ["--out", "not empty"]),
        "bad-engine": ([*TINY, "--engine", "fast", *out("bad-engine")], ["--engine", "population", "sequential"]),
        "bad-device": ([*TINY, "--device", "tpu", *out("bad-device")], ["--device", "auto", "cpu", "cuda"]),
        "zero-seeds": ([*TINY, "--seeds", "0", *out("zero-seeds")], ["--seeds", ">= 1"]),
        "zero-threads": ([*TINY, "--threads", "0", *out("zero-threads")], ["--threads", ">= 1"]),
        "resume-other-config": ([*TINY, "--set", "train.lr=0.01", "--resume", "--out", str(root / "tiny")],
                                ["--resume", "different"]),
        "device-cuda": ([*TINY, "--device", "cuda", *out("device-cuda")], ["--device cuda", "CUDA"]),
        "show-empty-dir": (["show", str(empty)], ["results.sqlite"]),
        "report-empty-dir": (["report", str(empty)], ["results.sqlite"]),
        "show-missing-dir": (["show", str(root / "never-made")], ["results.sqlite"]),
        # rich parses the message as markup, so brackets in a path vanish or crash the CLI
        "out-with-brackets": ([*TINY, "--out", str(root / "[exp1]" / "o")], [str(root / "[exp1]")]),
        "out-with-closing-tag": ([*TINY, "--out", str(root / "[/x]" / "o")], [str(root / "[/x]")]),
        # digits' size limit is only checked when the data loads, after --out was written
        "digits-too-many-points": ([*TINY, "--set", "data.name=digits", "--set", "data.n_train=5000",
                                    *out("digits-too-many-points")], ["data.n_train", "1697 points besides the test set"]),
        "data-for-a-population-study": ([*TINY, "--data", str(root / "a-file"), *out("data-population")],
                                        ["--data", "generates its own data", "min-norm"]),
        "data-file-missing": (["run", "min-norm", "--data", str(root / "no.npz"), *out("data-missing")],
                              ["--data", "no.npz", "does not exist"]),
        "data-not-an-npz": (["run", "min-norm", "--data", str(root / "a-file"), *out("data-not-npz")],
                            ["--data", "a-file", "not a readable .npz"]),
        "data-for-run-all": (["run", "all", "--data", str(root / "a-file"), *out("data-all")], ["--data", "run all"]),
    }
    return cases


# run again as real subprocesses (the rest run in-process through typer's CliRunner, which is ~1000x
# faster): one mistake caught in the config, and one whose message holds rich markup
SUBPROCESS_CASES = ("unknown-key", "out-with-closing-tag")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli")
    (path / "empty").mkdir()
    (path / "a-file").write_text("x")
    (path / "not-empty").mkdir()
    (path / "not-empty" / "notes.txt").write_text("x")
    return path


@pytest.fixture(scope="module")
def phase1(root) -> dict[str, CliResult]:
    """Independent subprocesses, two at a time: the tiny sweep and a few mistakes."""
    cases = error_cases(root)
    commands = {f"subprocess:{name}": cases[name][0] for name in SUBPROCESS_CASES}
    commands["tiny"] = [*TINY, "--json", "--out", str(root / "tiny")]
    names = list(commands)
    return dict(zip(names, run_cli_many([commands[n] for n in names])))


def assert_one_line_error(result: CliResult, expected: list[str], root: Path) -> None:
    assert_user_error(result, expected)
    assert result.stdout == "", result
    if "--out" in result.args and "--resume" not in result.args:
        target = Path(result.args[result.args.index("--out") + 1])
        if target.name not in ("a-file", "not-empty"):
            assert not target.exists(), f"{target} was created by a command that failed validation"
        assert target.parent == root or not target.parent.exists(), "a parent directory was created"
    assert list((root / "empty").iterdir()) == [], "show/report wrote into a directory with no results"
    assert sorted(p.name for p in (root / "not-empty").iterdir()) == ["notes.txt"]
    assert (root / "a-file").read_text() == "x"


# -- user mistakes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(error_cases(Path("/unused"))))
def test_user_mistake_exits_2_with_one_line_and_writes_nothing(root, phase1, name):
    if name == "device-cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is available here, so --device cuda is not a mistake")
    if name == "resume-other-config":
        assert phase1["tiny"].returncode == 0  # needs the tiny sweep's directory
        before = (root / "tiny" / "summary.json").read_bytes()
    args, expected = error_cases(root)[name]
    assert_one_line_error(invoke_cli(args), expected, root)
    if name == "resume-other-config":
        assert (root / "tiny" / "summary.json").read_bytes() == before


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_user_mistake_in_a_real_process(root, phase1, name):
    """The same contract outside CliRunner: real exit code, real stderr, typer's traceback handler."""
    _, expected = error_cases(root)[name]
    assert_one_line_error(phase1[f"subprocess:{name}"], expected, root)


def test_rerun_into_same_out_without_resume_exits_2_and_keeps_results(root, phase1):
    assert phase1["tiny"].returncode == 0, phase1["tiny"]
    result = invoke_cli([*TINY, "--out", root / "tiny"])
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--resume" in lines[0] and "already holds results" in lines[0], result
    summary = json.loads((root / "tiny" / "summary.json").read_text())
    assert summary == json.loads(phase1["tiny"].stdout)  # untouched


def test_run_without_out_writes_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default runs/<study>-<time> is relative to the working directory
    result = invoke_cli(TINY)
    assert result.returncode == 0, result
    made = list((tmp_path / "runs").glob("explicit-vs-implicit-*"))
    assert len(made) == 1 and (made[0] / "results.sqlite").is_file()


# -- successful commands ----------------------------------------------------------------------------

def test_list_names_the_study_and_its_paper():
    result = invoke_cli(["list"])
    assert result.returncode == 0, result
    text = " ".join(result.stdout.split())  # rich wraps long lines
    assert "explicit-vs-implicit" in text and "Zhang et al. 2017" in text


def test_tiny_run_writes_store_summary_report_and_figures(root, phase1):
    result = phase1["tiny"]
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr
    out = root / "tiny"
    assert {p.name for p in out.iterdir()} >= {"results.sqlite", "summary.json", "report.html", "figures"}
    assert not list(out.glob("*.tmp")), "a temporary file was left behind"

    runs, metrics = read_store(out)
    assert sorted(runs["run_id"]) == sorted(f"mlp/{arm}/seed0" for arm in ARMS)
    assert set(runs["status"]) == {"done"}
    # evaluated at steps 20 and 40 (eval_every=20, max_steps=40), the train accuracy target is not reached
    assert sorted(metrics["step"].unique()) == [20, 40]
    assert set(metrics["name"]) >= {"train_acc", "test_acc", "train_loss", "test_loss", "gap", "l2_norm",
                                    "dist_init"}

    figures = sorted((out / "figures").glob("*.png"))
    assert len(figures) >= 1
    for figure in figures:
        assert figure.read_bytes()[:8] == PNG_MAGIC


def test_summary_json_has_verdict_checks_table_and_provenance(root, phase1):
    summary = json.loads((root / "tiny" / "summary.json").read_text())
    assert summary["study"] == "explicit-vs-implicit"
    assert summary["claim"] and isinstance(summary["claim"], str)
    assert summary["verdict"] == "fail"  # 40 steps do not interpolate (below)
    assert len(summary["checks"]) == 4  # four checks per model, one model
    for check in summary["checks"]:
        assert {"name", "value", "threshold", "passed"} <= set(check)
        assert check["passed"] in (True, False, None)
    # the verdict follows from the checks as documented
    passed = [c["passed"] for c in summary["checks"]]
    expected = "fail" if False in passed else "inconclusive" if None in passed else "pass"
    assert summary["verdict"] == expected
    # 40 steps cannot interpolate MNIST-1D: the train-accuracy check fails with its number shown
    first = summary["checks"][0]
    assert first["name"] == "mlp: unregularized train accuracy" and first["passed"] is False
    assert 0.0 <= first["value"] < 0.99 and first["threshold"] == ">= 0.99"

    assert [row["arm"] for row in summary["table"]] == list(ARMS)
    assert all(row["runs"] == 1 and row["model"] == "mlp" for row in summary["table"])
    runs = {k: v for k, v in summary["runs"].items() if v}  # (zero counts may be listed or not)
    assert runs.get("done") == 5 and runs.get("planned", runs.get("total")) == 5
    assert not set(runs) - {"planned", "total", "done"}, runs
    prov = summary["provenance"]
    assert prov["threads"] == 1  # --threads 1
    assert prov["versions"]["torch"] == torch.__version__ and "implicitreg" in prov["versions"]
    assert prov["device"] == "cpu" and prov["engine"] == "population" and prov["quick"] is True
    assert summary["config"]["seeds"] == 1 and summary["config"]["mlp"]["hidden"] == [16]


def test_json_flag_prints_exactly_summary_json(root, phase1):
    printed = json.loads(phase1["tiny"].stdout)  # stdout holds nothing but the JSON
    stored = json.loads((root / "tiny" / "summary.json").read_text())
    assert printed["verdict"] == stored["verdict"]
    assert printed == stored


def test_report_html_is_self_contained(root, phase1):
    html = (root / "tiny" / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in html
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I), "external resource"
    assert "<script" not in html.lower()
    # one embedded image per figure, each a decodable PNG
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(images) == len(list((root / "tiny" / "figures").glob("*.png")))
    assert all(base64.b64decode(image)[:8] == PNG_MAGIC for image in images)
    summary = json.loads((root / "tiny" / "summary.json").read_text())
    assert summary["verdict"].upper() in html and "explicit-vs-implicit" in html


def test_show_json_reprints_the_stored_summary(root, phase1):
    assert phase1["tiny"].returncode == 0, phase1["tiny"]
    result = invoke_cli(["show", root / "tiny", "--json"])
    assert result.returncode == 0, result
    assert json.loads(result.stdout) == json.loads((root / "tiny" / "summary.json").read_text())


def test_show_prints_tables_and_the_verdict(root, phase1):
    assert phase1["tiny"].returncode == 0, phase1["tiny"]
    summary = json.loads((root / "tiny" / "summary.json").read_text())
    result = invoke_cli(["show", root / "tiny"])
    assert result.returncode == 0, result
    assert f"verdict: {summary['verdict'].upper()}" in result.stdout
    assert "mlp: unregularized train accuracy" in " ".join(result.stdout.split())


def test_report_rebuilds_the_same_summary_from_the_store(root, phase1):
    """Runs last in this module: it rewrites the tiny sweep's outputs (which must come out the same)."""
    assert phase1["tiny"].returncode == 0, phase1["tiny"]
    before = json.loads((root / "tiny" / "summary.json").read_text())
    (root / "tiny" / "report.html").unlink()
    result = invoke_cli(["report", root / "tiny"])
    assert result.returncode == 0, result
    assert f"verdict: {before['verdict'].upper()}" in result.stdout
    assert json.loads((root / "tiny" / "summary.json").read_text()) == before
    assert "data:image/png;base64," in (root / "tiny" / "report.html").read_text(encoding="utf-8")


def test_the_expected_duration_is_printed_before_training(tmp_path):
    result = invoke_cli([*TINY, "--out", tmp_path / "evi"])
    assert result.returncode == 0, result
    first = result.stderr.splitlines()[0]
    assert first.startswith("explicit-vs-implicit: expected about 2.0 min on 2 CPU cores for --quick")
    assert "your settings change it" in first  # TINY overrides the size
