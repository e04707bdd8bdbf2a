"""A directory's outputs — figures, ``summary.json``, ``report.html`` — written from its store, and
:class:`StudyResult`, what a run returns."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from implicitreg.config import ConfigError
from implicitreg.report.html import write_report
from implicitreg.runner.solutions import solved_args
from implicitreg.runner.summary import summarize
from implicitreg.store import Store, classify_write_error, describe_write_error


def write_outputs(directory: Path) -> "StudyResult":
    """Figures, ``summary.json`` and ``report.html`` from the store alone (each replaced atomically).

    :class:`ConfigError` when the directory cannot take them (not writable, ``figures`` not a
    directory); the store is only read, so nothing stored is lost.
    """
    directory = Path(directory)
    summary, study, config, analysis, runs, metrics = summarize(directory)
    figures_dir = directory / "figures"
    if (figures_dir.exists() or figures_dir.is_symlink()) and not figures_dir.is_dir():
        raise ConfigError(f"{figures_dir} exists and is not a directory; move it away to write the figures")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"{directory} is not writable; the report (summary.json, report.html, figures/) is "
                          "written there")
    temporary = [directory / "summary.json.tmp", directory / "report.html.tmp"]
    try:
        figures = (study.figures(config, runs, metrics, *solved_args(study, directory), figures_dir)
                   if not metrics.empty else [])
        temporary[0].write_text(json.dumps(summary, indent=2))
        os.replace(temporary[0], directory / "summary.json")
        report_tmp = write_report(summary, analysis.table, figures, temporary[1])
        os.replace(report_tmp, directory / "report.html")
    except OSError as err:
        for path in temporary:
            path.unlink(missing_ok=True)
        if classify_write_error(err) == "not-writable":
            raise ConfigError(f"{directory}: cannot write the report there ({describe_write_error(err)})") from None
        raise
    return StudyResult(directory, summary)


@dataclass
class StudyResult:
    """The outcome of a study run: verdict, summary, and the stored runs and metrics as DataFrames."""

    out: Path
    summary: dict[str, Any]
    failures: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return self.summary["verdict"]

    def runs(self) -> pd.DataFrame:
        with Store.open_existing(self.out) as store:
            return store.runs()

    def metrics(self) -> pd.DataFrame:
        with Store.open_existing(self.out) as store:
            return store.metrics()
