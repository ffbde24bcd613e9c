"""The Segment Anything network (SAM ViT-B/L/H and MobileSAM): our own implementation with the
official state-dict layout. Entry point: :func:`load_model`."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoints import (KNOWN_CHECKPOINTS, CheckpointError, CheckpointMismatch,
                          check_state_dict, describe_architecture, detect_architecture,
                          fetch_checkpoint, read_state_dict)
from .configs import MODEL_CONFIGS, SamConfig
from .point_decoder import DecodedMasks, PlainPointDecoder, PointDecoder, RejectWindow
from .sam import (COMPUTE_DTYPE_NAMES, ImageEmbedding, Sam, check_rgb_image, has_native_bfloat16,
                  resolve_compute_dtype)
from .sam2 import Sam2, Sam2ImageEmbedding
from .sam2_checkpoints import load_sam2
from .sam2_configs import SAM2_CONFIGS, Sam2Config


def build_model(name: str, device: str | torch.device = "cpu") -> Sam | Sam2:
    """A randomly initialised model of a named architecture, in eval mode.

    Raises:
        KeyError: ``name`` is in neither ``MODEL_CONFIGS`` nor ``SAM2_CONFIGS``.
    """
    if name in SAM2_CONFIGS:
        return Sam2(SAM2_CONFIGS[name]).to(device).eval()
    if name not in MODEL_CONFIGS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODEL_CONFIGS)}")
    return Sam(MODEL_CONFIGS[name]).to(device).eval()


def load_model(name_or_path: str | Path = "mobile_sam", device: str | torch.device = "cpu",
               arch: str | None = None) -> Sam | Sam2:
    """Build a SAM model and load its weights (SAM 2.1 names or ``arch``: :func:`load_sam2`).

    Args:
        name_or_path: a known checkpoint name (``mobile_sam``, ``vit_b``, ``vit_l``, ``vit_h``,
            ``sam2.1_hiera_tiny``/``_small``/``_base_plus``/``_large``), fetched and verified
            into the cache on first use; or the path of an official checkpoint file, whose
            architecture is detected from its keys and shapes (a SAM 2.1 file needs ``arch``).
        device: where the model lives (``"cpu"``, ``"cuda"``, ...).
        arch: optional expected architecture; a file of another architecture is refused.

    Returns:
        :class:`Sam` (or :class:`Sam2` for SAM 2.1) in eval mode on ``device``.

    Raises:
        CheckpointError: the weights cannot be found, fetched or verified.
        CheckpointMismatch: the file is not a SAM checkpoint, or not of the expected
            architecture, or its keys/shapes differ from the architecture's.
    """
    key = str(name_or_path)
    if key in SAM2_CONFIGS or arch in SAM2_CONFIGS:
        return load_sam2(name_or_path, device, arch)
    if key in KNOWN_CHECKPOINTS and not Path(key).exists():
        path, expected = fetch_checkpoint(key), key
    else:
        path, expected = Path(key), arch
    state = read_state_dict(path)
    found = detect_architecture(state, source=str(path))
    if expected is not None and found != expected:
        raise CheckpointMismatch(f"{path.name} holds {describe_architecture(found)} weights, "
                                 f"but {describe_architecture(expected)} was asked for")
    model = Sam(MODEL_CONFIGS[found])
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


__all__ = ["Sam", "SamConfig", "ImageEmbedding", "MODEL_CONFIGS", "KNOWN_CHECKPOINTS",
           "Sam2", "Sam2Config", "Sam2ImageEmbedding", "SAM2_CONFIGS", "load_sam2",
           "CheckpointError", "CheckpointMismatch", "build_model", "load_model",
           "fetch_checkpoint", "detect_architecture", "DecodedMasks", "RejectWindow",
           "PointDecoder", "PlainPointDecoder", "COMPUTE_DTYPE_NAMES", "check_rgb_image",
           "has_native_bfloat16", "resolve_compute_dtype"]
