"""Metrics, each its own small module (docs/method.md, "Metrics")."""
