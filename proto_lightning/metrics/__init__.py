"""Metrics, each its own small module (DESIGN.md section 5)."""
