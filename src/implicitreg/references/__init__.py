"""Exact references the theory studies are judged against, from well-kept solvers (numpy, scipy, scikit-learn, cvxpy)."""
