"""SAM 2.1 parity with the official ``sam2`` package for Hiera-B+ and Hiera-L (the same checks
as tests/test_sam2_parity.py for Hiera-T/S: block structure, encoder features, decoder
outputs; random weights, dog.jpg, float32, 1e-4 relative)."""

from __future__ import annotations

import pytest

from sam_model import SAM2_CONFIGS

from .conftest import read_photo
from .sam2_oracle import PROMPTS, EncodedPair, check_decoder, check_encoder

pytest.importorskip("sam2", reason="the SAM 2 parity oracle needs the official sam2 package")
pytestmark = pytest.mark.parity

SIZES = ["sam2.1_hiera_base_plus", "sam2.1_hiera_large"]


@pytest.fixture(scope="module", params=SIZES)
def pair(request) -> EncodedPair:
    """Oracle and ours of one size, dog.jpg encoded by both."""
    return EncodedPair(request.param, read_photo("dog.jpg"), seed=2 + SIZES.index(request.param))


def test_block_structure_matches_official(pair):
    specs = SAM2_CONFIGS[pair.name].trunk.block_specs()
    blocks = pair.ref.image_encoder.trunk.blocks
    assert [(s.dim, s.dim_out, s.num_heads, s.window_size, s.q_stride) for s in specs] == \
        [(b.dim, b.dim_out, b.attn.num_heads, b.window_size,
          tuple(b.q_stride) if b.q_stride else None) for b in blocks]


def test_encoder_features_match(pair):
    check_encoder(pair)


@pytest.mark.parametrize("prompt", ["points_pos_neg", "box_and_point"])
@pytest.mark.parametrize("multimask", [True, False])
def test_decoder_outputs_match(pair, prompt, multimask):
    check_decoder(pair, prompt, multimask, with_mask_input=prompt == "points_pos_neg")
