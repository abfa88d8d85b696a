"""Stages a user runs from the command line; each takes the composed config and returns a summary."""
