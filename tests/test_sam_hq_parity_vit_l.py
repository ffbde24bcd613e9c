"""HQ-SAM ViT-L parity with the official ``segment_anything_hq`` (test-only oracle): the
same seeded random weights, a real photo, float32, the real 1024 input (one file per large size
keeps each file's run short). Tolerances in :mod:`tests.hq_oracle` (1e-4 relative)."""

from __future__ import annotations

import pytest

from . import hq_oracle as hq

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def pair():
    return hq.encoded_pair("sam_hq_vit_l", "picture1.jpg", seed=1)


def test_encoder_outputs_and_interm_embedding(pair):
    hq.check_encoder(pair)


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("hq_token_only", [False, True], ids=["sam+hq", "hq_only"])
def test_decoder_outputs(pair, multimask, hq_token_only):
    hq.check_decoder(pair, multimask, hq_token_only)


def test_point_decoder_is_the_official_batch_step(pair):
    hq.check_point_decoder(pair)
