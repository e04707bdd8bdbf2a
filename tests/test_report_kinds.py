"""The standard figure kinds draw what their panels declare: curves from the store's long-format
metrics (step 0 left off a log axis, values clipped at their floor), reference lines, spans, bars
with their tick labels, scales and labels."""

import numpy as np
import pandas as pd
from PIL import Image

from implicitreg.report import kinds


def metrics() -> pd.DataFrame:
    rows = [{"run_id": run, "step": step, "name": name, "value": value}
            for run in ("a", "b") for step in (0, 1, 10, 100)
            for name, value in (("loss", 0.0 if step == 100 else 1.0 / (1 + step)), ("rank", 2.0))]
    return pd.DataFrame(rows)


def test_series_vs_step_builds_one_panel_per_metric_and_one_curve_per_run():
    loss, rank = kinds.series_vs_step(metrics(), ["loss", "rank"], [("a", "run a", {"color": "C0"}),
                                      ("b", "run b", {}), ("missing", "none", {})],
                                      titles=("loss",), floor=1e-16, log=(True, False))
    assert [c.label for c in loss.curves] == ["run a", "run b"]  # a run without the metric draws nothing
    assert list(loss.curves[0].x) == [1, 10, 100]  # step 0 has no place on a log axis
    assert (loss.xscale, loss.yscale, loss.title, rank.title) == ("log", "linear", "loss", "")
    assert loss.curves[0].floor == 1e-16 and loss.curves[0].style == {"color": "C0"}


def test_value_vs_parameter_skips_missing_columns_and_marks_points():
    table = pd.DataFrame({"alpha": [0.01, 0.1, 1.0], "error": [1e-3, 1e-2, 1e-1]})
    panel = kinds.value_vs_parameter(table, "alpha", [("error", "GD", {}), ("absent", "x", {})], xlabel="α",
                                     lines=[kinds.Line(1e-2, "tolerance")])
    assert [c.label for c in panel.curves] == ["GD"] and panel.curves[0].style == {"marker": "o"}
    assert panel.lines[0].value == 1e-2 and panel.xlabel == "α"


def test_draw_writes_every_panel_with_its_pieces(tmp_path):
    curve = kinds.Panel([kinds.Curve([1, 10, 100], [1.0, 0.1, 0.0], "GD", floor=1e-12)],
                        lines=[kinds.Line(1e-6, "tolerance"), kinds.Line(None, "exact: 0"), kinds.Line(3, axis="x")],
                        spans=[kinds.Span(10, 100, "window")], xscale="log", yscale="log", title="t", xlabel="step")
    bars = kinds.Panel(bars=kinds.Bars(["GD", "Adam"], [0.0, None]), grid="y", ylabel="test error")
    path = kinds.draw([curve, bars], tmp_path / "f.png", size=(4, 3))
    assert Image.open(path).size == (880, 330)  # two 4×3-inch panels at 110 dpi
    # the figure objects are not kept; redraw onto axes we can inspect
    from implicitreg.report import figures
    captured = {}
    original = figures.save_figure

    def keep(fig, target):
        captured["fig"] = fig
        return original(fig, target)
    kinds.save_figure = keep
    try:
        kinds.draw([curve, bars], tmp_path / "g.png")
    finally:
        kinds.save_figure = original
    left, right = captured["fig"].axes
    assert left.get_xscale() == "log" and left.get_title() == "t" and left.get_xlabel() == "step"
    assert np.min(left.lines[0].get_ydata()) == 1e-12  # the zero clipped at the floor
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["window", "GD", "tolerance", "exact: 0"]
    assert [t.get_text() for t in right.get_xticklabels()] == ["GD", "Adam"]
    assert right.get_ylabel() == "test error" and right.get_legend() is None
