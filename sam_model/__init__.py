"""The Segment Anything family: SAM (ViT-B/L/H), MobileSAM, SAM-HQ (ViT-B/L/H, light ViT-tiny),
SAM 2.1 (Hiera-T/S/B+/L, image mode) and EfficientSAM (ViT-T/S), our own implementations with
the official state-dict layouts. Entry points: :func:`load_model` and :func:`build_model`.

Every model offers the generator's seam (:mod:`sam_model.point_decoder`): ``encode_image``,
``point_decoder``, ``low_res_to_image``, ``mask_threshold`` and ``device``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoints import (KNOWN_CHECKPOINTS, CheckpointError, CheckpointMismatch,
                          check_state_dict, describe_architecture, detect_architecture,
                          fetch_checkpoint, read_state_dict)
from .configs import (EFFICIENT_SAM_CONFIGS, MODEL_CONFIGS, SAM_HQ_CONFIGS, EfficientSamConfig,
                      SamConfig, SamHQConfig)
from .efficient_sam import (EfficientSam, EfficientSamEmbedding, build_efficient_sam,
                            load_efficient_sam)
from .family_model import DecoderOptionError
from .model_table import ModelEntry, model_table
from .point_decoder import DecodedMasks, PlainPointDecoder, PointDecoder, RejectWindow
from .sam import (COMPUTE_DTYPE_NAMES, ImageEmbedding, Sam, check_rgb_image, has_native_bfloat16,
                  resolve_compute_dtype)
from .sam2 import Sam2, Sam2ImageEmbedding
from .sam2_checkpoints import load_sam2
from .sam2_configs import SAM2_CONFIGS, Sam2Config
from .sam_hq import HQImageEmbedding, SamHQ

Model = Sam | SamHQ | Sam2 | EfficientSam


def model_names() -> list[str]:
    """Every architecture name :func:`build_model` knows, family by family."""
    return (sorted(MODEL_CONFIGS) + sorted(SAM_HQ_CONFIGS) + sorted(SAM2_CONFIGS)
            + sorted(EFFICIENT_SAM_CONFIGS))


def _new_model(name: str) -> Sam | SamHQ:
    """A randomly initialised SAM or SAM-HQ model of a known name (train mode, CPU)."""
    return SamHQ(SAM_HQ_CONFIGS[name]) if name in SAM_HQ_CONFIGS else Sam(MODEL_CONFIGS[name])


def build_model(name: str, device: str | torch.device = "cpu") -> Model:
    """A randomly initialised model of a named architecture (:func:`model_names`), in eval mode.

    Raises:
        KeyError: ``name`` is not a known architecture.
    """
    if name in SAM2_CONFIGS:
        return Sam2(SAM2_CONFIGS[name]).to(device).eval()
    if name in EFFICIENT_SAM_CONFIGS:
        return build_efficient_sam(name, device)
    if name not in MODEL_CONFIGS and name not in SAM_HQ_CONFIGS:
        raise KeyError(f"unknown model {name!r}; known: {model_names()}")
    return _new_model(name).to(device).eval()


def load_model(name_or_path: str | Path = "mobile_sam", device: str | torch.device = "cpu",
               arch: str | None = None) -> Model:
    """Build a model and load its weights.

    Args:
        name_or_path: a known checkpoint name (``mobile_sam``, ``vit_b``, ``vit_l``, ``vit_h``;
            ``sam_hq_vit_b/l/h/tiny``; ``sam2.1_hiera_tiny/small/base_plus/large``;
            ``efficient_sam_vitt/vits``), fetched and verified into the cache on first use
            where a sha256 is published, else taken from the cache where the user put it; or
            the path of an official checkpoint file. SAM v1 / MobileSAM / SAM-HQ files are
            recognised from their keys and shapes; a SAM 2.1 or EfficientSAM file needs
            ``arch`` (``sam2.1_hiera_*``, ``efficient_sam_vit*``) to choose its loader.
        device: where the model lives (``"cpu"``, ``"cuda"``, ...).
        arch: optional expected architecture; a file of another architecture is refused.

    Returns:
        the family's model (:data:`Model`) in eval mode on ``device``.

    Raises:
        CheckpointError: the weights cannot be found, fetched or verified.
        CheckpointMismatch: the file is not a checkpoint of a known family, or not of the
            expected architecture, or its keys/shapes differ from the architecture's.
    """
    key = str(name_or_path)
    if key in SAM2_CONFIGS or arch in SAM2_CONFIGS:
        return load_sam2(name_or_path, device, arch)
    if key in EFFICIENT_SAM_CONFIGS or arch in EFFICIENT_SAM_CONFIGS:
        return load_efficient_sam(name_or_path, device, arch)
    if key in KNOWN_CHECKPOINTS and not Path(key).exists():
        path, expected = fetch_checkpoint(key), key
    else:
        path, expected = Path(key), arch
    state = read_state_dict(path)
    found = detect_architecture(state, source=str(path))
    if expected is not None and found != expected:
        raise CheckpointMismatch(f"{path.name} holds {describe_architecture(found)} weights, "
                                 f"but {describe_architecture(expected)} was asked for")
    model = _new_model(found)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


__all__ = ["Model", "Sam", "SamConfig", "ImageEmbedding", "MODEL_CONFIGS", "KNOWN_CHECKPOINTS",
           "SamHQ", "SamHQConfig", "HQImageEmbedding", "SAM_HQ_CONFIGS",
           "Sam2", "Sam2Config", "Sam2ImageEmbedding", "SAM2_CONFIGS", "load_sam2",
           "EfficientSam", "EfficientSamConfig", "EfficientSamEmbedding", "EFFICIENT_SAM_CONFIGS",
           "build_efficient_sam", "load_efficient_sam",
           "CheckpointError", "CheckpointMismatch", "DecoderOptionError", "ModelEntry", "model_table", "build_model", "load_model", "model_names",
           "fetch_checkpoint", "detect_architecture", "DecodedMasks", "RejectWindow",
           "PointDecoder", "PlainPointDecoder", "COMPUTE_DTYPE_NAMES", "check_rgb_image",
           "has_native_bfloat16", "resolve_compute_dtype"]
