"""The Segment Anything network (SAM ViT-B/L/H and MobileSAM; EfficientSAM ViT-T/ViT-S): our own
implementation with the official state-dict layouts. Entry points: :func:`load_model`,
:func:`load_efficient_sam`."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoints import (KNOWN_CHECKPOINTS, CheckpointError, CheckpointMismatch,
                          check_state_dict, describe_architecture, detect_architecture,
                          fetch_checkpoint, read_state_dict)
from .configs import EFFICIENT_SAM_CONFIGS, MODEL_CONFIGS, EfficientSamConfig, SamConfig
from .efficient_sam import (EfficientSam, EfficientSamEmbedding, build_efficient_sam,
                            load_efficient_sam)
from .sam import ImageEmbedding, Sam


def build_model(name: str, device: str | torch.device = "cpu") -> Sam:
    """A randomly initialised model of a named architecture, in eval mode.

    Raises:
        KeyError: ``name`` is not in ``MODEL_CONFIGS``.
    """
    if name not in MODEL_CONFIGS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODEL_CONFIGS)}")
    return Sam(MODEL_CONFIGS[name]).to(device).eval()


def load_model(name_or_path: str | Path = "mobile_sam", device: str | torch.device = "cpu",
               arch: str | None = None) -> Sam:
    """Build a SAM model and load its weights.

    Args:
        name_or_path: a known checkpoint name (``mobile_sam``, ``vit_b``, ``vit_l``, ``vit_h``),
            fetched and verified into the cache on first use; or the path of an official
            checkpoint file, whose architecture is detected from its keys and shapes.
        device: where the model lives (``"cpu"``, ``"cuda"``, ...).
        arch: optional expected architecture; a file of another architecture is refused.

    Returns:
        :class:`Sam` in eval mode on ``device``.

    Raises:
        CheckpointError: the weights cannot be found, fetched or verified.
        CheckpointMismatch: the file is not a SAM checkpoint, or not of the expected
            architecture, or its keys/shapes differ from the architecture's.
    """
    key = str(name_or_path)
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
           "CheckpointError", "CheckpointMismatch", "build_model", "load_model",
           "fetch_checkpoint", "detect_architecture",
           "EfficientSam", "EfficientSamConfig", "EfficientSamEmbedding", "EFFICIENT_SAM_CONFIGS",
           "build_efficient_sam", "load_efficient_sam"]
