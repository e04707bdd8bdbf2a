"""Importing the package has no side effects a notebook user would notice: the matplotlib backend
stays as the user set it, pyplot's global state is untouched, and cvxpy and scipy's optimize,
stats and integrate (about 1 s of start-up together, measured) are only imported by the code that
uses them, and Ray (an optional extra) only by the Ray backend."""

import subprocess
import sys

PROBE = """
import sys, matplotlib
matplotlib.use("svg")
import implicitreg, implicitreg.runner, implicitreg.studies, implicitreg.cli
from implicitreg.studies import STUDIES
lazy = ("cvxpy", "scipy.optimize", "scipy.stats", "scipy.integrate", "ray")
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules, any(m in sys.modules for m in lazy), len(STUDIES))
"""


def test_import_switches_no_backend_and_loads_no_solver():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    assert out[:3] == ["svg", "False", "False"], out
    assert int(out[3]) >= 13
