"""The README's "Bring your own model" example runs as written and gives sane values."""

from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_bring_your_own_model_example_runs():
    text = README.read_text(encoding="utf-8")
    block = text.split("## Bring your own model")[1].split("```python")[1].split("```")[0]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    measures, model, init, data = namespace["measures"], namespace["model"], namespace["init"], (namespace["x"],
                                                                                             namespace["y"])
    eig = namespace["eig"]
    assert bool(eig.converged.all()) and eig.values[0] >= eig.values[1] > 0  # a trained net: positive top curvature
    assert float(measures.distance_from_init(model, init)) > 0
    values = measures.compute(["l2_norm", "path_norm", "hessian_trace"], model, init=init, data=data)
    assert all(torch.isfinite(v) and v > 0 for v in values.values())
