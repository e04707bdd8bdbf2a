"""The summary of a results directory, from its store alone: the study's analysis, the run counts and
the verdict (:func:`judge`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from implicitreg.runner.solutions import solved_args
from implicitreg.store import Store
from implicitreg.studies import get_study
from implicitreg.studies.base import Analysis, Study, is_solved


QUICK_NOTE = "--quick: the same checks at a smaller size (fewer seeds, data or steps)."


def _clean(value: Any) -> Any:
    """JSON-safe: NaN → None, numpy scalars → Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarize(directory: Path) -> tuple[dict[str, Any], Study, Any, Analysis, pd.DataFrame, pd.DataFrame]:
    """Re-analyze a directory's stored results; returns the summary (as in ``summary.json``) and
    what it was computed from. Writes nothing."""
    with Store.open_existing(directory) as store:
        meta, runs, metrics = store.meta(), store.runs(), store.metrics()
    study = get_study(meta["study"])
    config = study.Config.model_validate(meta["config"])
    analysis = study.analyze(config, runs, metrics, *solved_args(study, directory))
    counts, missing = run_counts(study, config, runs, meta)
    verdict, why = judge(study, analysis, counts, missing, bool(meta.get("quick")))
    first_provenance = runs["provenance"].iloc[0] if len(runs) else {}
    quick_note = getattr(study, "quick_note", QUICK_NOTE)  # what --quick changes, where a study says it
    # entries an analysis adds to the summary (a sweep's name and description, its measure ranking)
    extra = dict(getattr(analysis, "summary_fields", None) or {})
    summary = _clean({
        "study": study.name,
        "claim": study.claim,
        "paper": study.paper,
        "verdict": verdict,
        "checks": [c.as_dict() for c in analysis.checks],
        "table": analysis.table.to_dict("records"),
        **extra,
        "notes": ([why] if why else []) + analysis.notes + ([quick_note] if meta.get("quick") else []),
        "runs": counts,
        "config": meta["config"],
        "provenance": {**first_provenance, "engine": meta.get("engine"), "quick": meta.get("quick"),
                       "wall_seconds": meta.get("wall_seconds")},
    })
    return summary, study, config, analysis, runs, metrics


def run_counts(study: Study, config: Any, runs: pd.DataFrame, meta: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``{planned, done, diverged, failed, missing}`` and the ids of the planned runs that did not
    finish (failed, interrupted or never started). A solved study plans the runs its solve stored;
    before its solve finished, its runs are all missing (``planned`` counts the populations' alone).
    A study whose runs come from outside the plan (a tracked training loop) says which it planned
    with an optional hook ``planned_runs(config, runs)`` → run ids."""
    hook = getattr(study, "planned_runs", None)
    planned = (list(hook(config, runs)) if callable(hook)
               else [m.run_id for group in study.plan(config) for m in group.members])
    if is_solved(study):
        solved = [] if not meta.get("solved") else [r for r in runs["run_id"] if r not in set(planned)]
        planned = solved + planned
    status = dict(zip(runs["run_id"], runs["status"]))
    missing = [r for r in planned if status.get(r) not in ("done", "diverged")]
    if is_solved(study) and not meta.get("solved"):
        missing.insert(0, "(the exact solve)")
    statuses = [status.get(r) for r in planned]
    counts = {"planned": len(planned), "done": statuses.count("done"), "diverged": statuses.count("diverged"),
              "failed": statuses.count("failed"), "missing": len(missing)}
    return counts, missing


def judge(study: Study, analysis: Analysis, counts: dict[str, int], missing: list[str],
          quick: bool) -> tuple[str | None, str]:
    """The verdict and, when it is not the checks' own, why: a planned run that failed or never
    finished makes it inconclusive (its arm's checks rest on fewer runs than planned); a quick run
    of a study whose claim needs the full size is a smoke test; an open experiment (``claim`` None)
    has no verdict, and only says which planned runs did not finish."""
    if study.claim is None:
        hint = getattr(study, "resume_hint", "Continue them with --resume.")  # a tracked loop resumes elsewhere
        return None, (f"{len(missing)} of {counts['planned']} planned runs did not finish ({counts['failed']} failed): "
                      f"{_shown(missing)}. {hint}" if missing else "")
    caveat = getattr(study, "quick_caveat", None)
    if quick and caveat:
        return "smoke", f"verdict smoke: --quick cannot show this claim ({caveat}); run without --quick to judge it."
    if missing:
        return "inconclusive", (f"verdict inconclusive: {len(missing)} of {counts['planned']} planned runs did not "
                                f"finish ({counts['failed']} failed): {_shown(missing)}; checks {analysis.verdict} on "
                                "the rest. Continue them with --resume.")
    return analysis.verdict, ""


def _shown(run_ids: list[str], at_most: int = 8) -> str:
    return ", ".join(run_ids[:at_most]) + (f", … ({len(run_ids) - at_most} more)" if len(run_ids) > at_most else "")
