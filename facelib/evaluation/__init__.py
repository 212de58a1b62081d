"""Measurements: each paper's tables and figures, and the evaluators' held-out figures."""
