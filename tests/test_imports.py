"""Importing the package has no side effects a notebook user would notice: the matplotlib backend
stays as the user set it, pyplot's global state is untouched, and cvxpy (a second of start-up) is
only imported by the references that solve with it."""

import subprocess
import sys

PROBE = """
import sys, matplotlib
matplotlib.use("svg")
import implicitreg, implicitreg.runner, implicitreg.studies, implicitreg.cli
from implicitreg.studies import STUDIES
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules, "cvxpy" in sys.modules, len(STUDIES))
"""


def test_import_switches_no_backend_and_loads_no_solver():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    assert out[:3] == ["svg", "False", "False"], out
    assert int(out[3]) >= 13
