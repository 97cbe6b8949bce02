"""Shared test fixtures. Real artifacts live in ../shared/assets (absent on a user's fresh clone)."""
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_ASSETS = ROOT.parent / "shared" / "assets"


def shared_asset(relative: str) -> Path:
    """Path of a file under ../shared/assets, or skip the test when it is not there."""
    path = SHARED_ASSETS / relative
    if not path.exists():
        pytest.skip(f"{path} not present (../shared/assets is only beside the development checkout)")
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
