"""Shared fixtures: real third-party data (fetched once into .cache/testdata)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _fetch_module():
    spec = importlib.util.spec_from_file_location("fetch_test_data", ROOT / "scripts" / "fetch_test_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pyradiomics_data() -> Path:
    """The pyradiomics-bhklab 3.1.4 sdist's data/ folder (real lung CT, brain MR, masks)."""
    return _fetch_module().pyradiomics_data()
