"""Test set-up: models/ (exporters, shared-data paths) and tools/ (the benchmark scripts) are importable; the
shared data must exist."""

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
sys.path.append(str(ROOT / "tools"))

from paths import MISSING, SHARED  # noqa: E402


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not SHARED.is_dir():
        pytest.fail(MISSING)
    return SHARED
