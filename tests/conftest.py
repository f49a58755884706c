"""Shared fixtures: the reference directory (skipped when absent) and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REFERENCE_ENV = "LIMUBERT_REFERENCE_DIR"
DEFAULT_REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference"
RELEASED_DATASETS = ("hhar", "motion", "uci", "shoaib")


def reference_dir() -> Path | None:
    """`$LIMUBERT_REFERENCE_DIR`, defaulting to `../shared/reference` beside the checkout."""
    path = Path(os.environ.get(REFERENCE_ENV, DEFAULT_REFERENCE)).resolve()
    return path if (path / "SPEC.md").is_file() else None


@pytest.fixture(scope="session")
def reference() -> Path:
    path = reference_dir()
    if path is None:
        pytest.skip(
            f"reference directory not found (set {REFERENCE_ENV}; default {DEFAULT_REFERENCE.resolve()})"
        )
    return path
