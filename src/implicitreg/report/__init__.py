"""Figures (matplotlib, headless) and the self-contained HTML report."""
