"""The import graph is layered and acyclic (DESIGN.md, "Layers"): a module imports only from its own
layer or the layers below it, and no chain of imports leads back to where it started.

Every ``.py`` file under ``src/implicitreg`` is parsed with ``ast``; every import counts — at the
top of the file, inside functions and classes, under ``if TYPE_CHECKING:`` (no exception: a type
is a dependency too), absolute or relative. A module's layer is the one of its top-level file or
folder (``measures/core.py`` → ``measures``; ``src/implicitreg/__init__.py`` → ``__init__``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "implicitreg"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

#: Lowest first. A module may import from its own layer and the ones below.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    # know nothing above them
    ("foundation", frozenset({"config", "seeding", "counters", "data", "models", "plan"})),
    # pure functions of (model or population, data, loss); see PURE below
    ("measures", frozenset({"measures"})),
    # population + kernels + optim + sampling + precision + train loop + sequential + its hooks (evaluation, tracking)
    ("engine", frozenset({"population", "kernels", "cnn_kernel", "optim", "sampling", "precision", "graphs", "train",
                          "sequential", "hooks", "landscape"})),
    # exact small-problem solvers and references, and the toolkits studies are built from: rank
    # statistics (evaluate) and figures (report/: the studies draw with report.figures, the driver
    # writes report.html; report imports nothing of the package)
    ("toolkits", frozenset({"dynamics", "references", "evaluate", "report"})),
    ("studies", frozenset({"studies"})),
    # the driver and everything a user touches
    ("driver", frozenset({"runner", "backends", "store", "display", "provenance", "cli", "tracker", "sweep",
                          "__init__", "__main__"})),
)

#: Layers held to a stricter rule than "below": measures read models' public types and seeded
#: random streams, never config, data, plans or anything of the training loop.
PURE = {"measures": frozenset({"measures", "models", "seeding"})}

RANK = {part: i for i, (_, parts) in enumerate(LAYERS) for part in parts}
LAYER_NAME = {part: name for name, parts in LAYERS for part in parts}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted (a package's __init__ is the package's name)
    path: Path
    line: int
    text: str  # the import statement as written


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` under ``root`` (the package directory)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def part_of(module: str) -> str:
    """The top-level file or folder a module belongs to: ``implicitreg.measures.core`` → ``measures``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(root: Path) -> list[Import]:
    """Every import of a module of the package, from every module of the package."""
    known = modules(root)
    package = root.name
    found = []
    for module, path in known.items():
        is_package = path.name == "__init__.py"
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package, up level - 1
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # `from pkg import sub` imports the submodule; `from pkg import name` the package
                names = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known else prefix
                         for alias in node.names]
            else:
                continue
            text = ast.get_source_segment(source, node) or ast.dump(node)
            for name in dict.fromkeys(names):
                if name == package or name.startswith(package + "."):
                    found.append(Import(module, _existing(name, known), path, node.lineno, " ".join(text.split())))
    return found


def _existing(name: str, known: dict[str, Path]) -> str:
    """The module a dotted import name loads: itself, or its longest existing parent."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def where(imp: Import, root: Path) -> str:
    """``src/implicitreg/x.py:LINE``."""
    return f"{imp.path.relative_to(root.parent.parent)}:{imp.line}"


def layer_violations(root: Path) -> list[str]:
    """One line per module without a layer and per import from a higher layer (or outside a pure layer's list)."""
    problems = []
    for module, path in modules(root).items():
        if part_of(module) not in RANK:
            problems.append(f"{path.relative_to(root.parent.parent)}: {part_of(module)!r} has no layer; add it to "
                            "LAYERS in tests/test_layers.py (see DESIGN.md, Layers)")
    for imp in imports(root):
        src, dst = part_of(imp.source), part_of(imp.target)
        if src not in RANK or dst not in RANK:
            continue
        if RANK[dst] > RANK[src]:
            problems.append(f"{where(imp, root)}: `{imp.text}` — {LAYER_NAME[src]} ({src}) imports from the higher "
                            f"layer {LAYER_NAME[dst]} ({dst})")
        elif src in PURE and dst not in PURE[src]:
            problems.append(f"{where(imp, root)}: `{imp.text}` — {src} may import only {sorted(PURE[src])} of "
                            f"{PACKAGE}, not {dst}")
    return problems


def cycles(root: Path) -> list[str]:
    """One line per import cycle found by a depth-first search over the module graph.

    Only written imports are edges: importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``,
    which every package does, and is not counted.
    """
    graph: dict[str, dict[str, Import]] = {}
    for imp in imports(root):
        if imp.target != imp.source:
            graph.setdefault(imp.source, {}).setdefault(imp.target, imp)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    seen: set[frozenset[str]] = set()
    found = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt, imp in sorted(graph.get(node, {}).items()):
            if state.get(nxt) == 1:
                ring = path[path.index(nxt):]
                start = ring.index(min(ring))  # written from its smallest module name, whatever the search order
                loop = ring[start:] + ring[:start] + [ring[start]]
                if frozenset(loop) not in seen:
                    seen.add(frozenset(loop))
                    steps = [f"{where(graph[a][b], root)} `{graph[a][b].text}`" for a, b in zip(loop, loop[1:])]
                    found.append(" → ".join(loop) + ": " + "; ".join(steps))
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_every_import_points_down_the_layers():
    problems = layer_violations(SRC)
    assert not problems, "imports against the layers (DESIGN.md, Layers):\n" + "\n".join(problems)


def test_the_module_graph_has_no_cycle():
    found = cycles(SRC)
    assert not found, "import cycles:\n" + "\n".join(found)


def test_the_checks_see_what_they_should(tmp_path):
    """On a small package: an upward import inside a function, one under TYPE_CHECKING, a relative
    one, a measure reading config, an unplaced module and a cycle are each reported."""
    pkg = tmp_path / "src" / PACKAGE
    files = {
        "__init__.py": "from implicitreg import train\n",
        "config.py": "def f():\n    from implicitreg.measures import REGISTRY\n",
        "measures/__init__.py": "from .core import stacked\n",
        "measures/core.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                             "    from ..sequential import Hook\nfrom implicitreg.plan import Group\n"),
        "population.py": "import implicitreg.train\n",
        "train.py": "from implicitreg.population import Population\nfrom implicitreg.measures import core\n",
        "plan.py": "",
        "sequential.py": "",
        "stray.py": "",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    problems = "\n".join(layer_violations(pkg))
    assert ("src/implicitreg/config.py:2: `from implicitreg.measures import REGISTRY` — foundation (config)"
            in problems)
    assert "src/implicitreg/measures/core.py:3: `from ..sequential import Hook` — measures" in problems
    assert "measures/core.py:4: `from implicitreg.plan import Group` — measures may import only" in problems
    assert "'stray' has no layer" in problems
    assert len(problems.splitlines()) == 4, problems
    found = sorted(cycles(pkg))
    assert [line.split(":")[0] for line in found] == [
        "implicitreg.population → implicitreg.train → implicitreg.population"], found
    assert "src/implicitreg/train.py:1 `from implicitreg.population import Population`" in found[0]
