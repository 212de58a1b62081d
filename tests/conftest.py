"""Shared test setup.

The suite is run as ``FACELIB_SMOKE=1 python -m pytest --nbval-lax --nbval-current-env notebooks/ tests/``
(README, .ci/run): nbval executes every notebook once, cell by cell, each cell a test item, and
compares the outputs of cells marked ``# NBVAL_CHECK_OUTPUT``; tests/test_notebooks.py checks
the committed notebooks' policy without executing them again.
"""
from __future__ import annotations

import os

import matplotlib
import pytest

# Figures in tests are drawn off-screen. Only this process: notebook kernels keep their inline backend.
matplotlib.use("Agg")

# Notebooks executed under pytest run in smoke mode unless the caller chose otherwise
# (FACELIB_SMOKE=0 checks the default, reader-length mode). Kernels inherit this variable.
os.environ.setdefault("FACELIB_SMOKE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark nbval's notebook cells ``notebook`` so ``-m "not notebook"`` runs the package tests alone."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebook)
