"""Complexity measures; :mod:`implicitreg.measures.basic` holds those tracked by every run."""

from implicitreg.measures.basic import accuracy_and_loss, distance_from_init, evaluate_population, l2_norm

__all__ = ["accuracy_and_loss", "distance_from_init", "evaluate_population", "l2_norm"]
