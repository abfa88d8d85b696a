"""Evaluation of the prototype networks and explainers: artifacts, methods, scores, table, figures."""
