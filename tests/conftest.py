"""Shared fixtures: the real photos in ../shared, the real MobileSAM weights, and the
reference implementations (test-only oracles)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGMENT_EVERYTHING_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A file under ../shared; fails (does not skip) when it is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.fail(f"test data missing: {p} (set SEGMENT_EVERYTHING_SHARED to the shared folder)")
    return p


def read_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of ../shared/images/<name>."""
    from amg.io import load_image
    return load_image(shared_path("images", name))[0]


@pytest.fixture(scope="session")
def mobile_sam():
    """Our model with the real MobileSAM weights (fetched and verified on first use)."""
    from sam_model import load_model
    return load_model("mobile_sam", device="cpu")


@pytest.fixture(scope="session")
def ref_mobile_sam():
    """The MobileSAM reference model (mobilesam-lite) with the same weights."""
    pytest.importorskip("mobilesam_lite", reason="the parity oracle needs the test extra")
    from sam_model.checkpoints import fetch_checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobilesam_lite.mobile_sam import sam_model_registry
    return sam_model_registry["vit_t"](checkpoint=str(fetch_checkpoint("mobile_sam"))).eval()
