"""Strict loading of the official SAM 2.1 checkpoint files into :class:`sam_model.sam2.Sam2`.

An official file (``sam2.1_hiera_{tiny,small,base_plus,large}.pt``) is a dict with key
``"model"`` holding the state dict of the whole video model (``SAM2Base``). Image mode uses the
``image_encoder.*``, ``sam_prompt_encoder.*``, ``sam_mask_decoder.*`` and ``no_mem_embed``
keys, which load unchanged; the keys of the video modules (:data:`VIDEO_ONLY_KEY_PREFIXES`)
are left unloaded. Every other key is checked strictly: missing and unexpected keys raise,
listing them, and every shape is compared. The size (tiny/small/base_plus/large) is detected
from the trunk's width and block count. The download records (URLs, Hugging Face ids, sha256
where published, licence) are in :data:`sam_model.checkpoints.KNOWN_CHECKPOINTS`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoints import CheckpointMismatch, check_state_dict, fetch_checkpoint, load_torch_file
from .sam2 import Sam2
from .sam2_configs import SAM2_CONFIGS

VIDEO_ONLY_KEY_PREFIXES: tuple[str, ...] = (
    "maskmem_tpos_enc",      # temporal encoding of the memory frames
    "no_mem_pos_enc",        # position encoding of the "no memory" token
    "no_obj_ptr",            # object pointer used when no object is present
    "no_obj_embed_spatial",  # memory feature added when no object is present
    "mask_downsample",       # mask-prompt -> low-res logits for object pointers
    "memory_attention",      # memory attention (conditioning on past frames)
    "memory_encoder",        # memory encoder (mask + features -> memory)
    "obj_ptr_proj",          # decoder token -> object pointer
    "obj_ptr_tpos_proj",     # temporal encoding of object pointers
)
"""State-dict keys of SAM 2's video modules, left unloaded in image mode: a key is video-only
when it equals one of these names or starts with one followed by ``.``. The image model
(:class:`Sam2`) has no such modules; a file may hold them or not."""


def is_video_only_key(key: str) -> bool:
    """Whether ``key`` belongs to a video module (:data:`VIDEO_ONLY_KEY_PREFIXES`)."""
    return any(key == p or key.startswith(p + ".") for p in VIDEO_ONLY_KEY_PREFIXES)


def read_sam2_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside an official SAM 2 checkpoint file (``torch.load`` with
    ``weights_only=True`` on the CPU, then key ``"model"``).

    Raises:
        CheckpointError: the file is missing, a folder, or not loadable by torch (truncated...).
        CheckpointMismatch: the file is not a dict with a ``"model"`` state dict of tensors
            (e.g. a SAM v1 / MobileSAM flat state dict).
    """
    path = Path(path)
    obj = load_torch_file(path)
    if not isinstance(obj, dict) or "model" not in obj:
        kind = "a flat state dict (SAM v1 / MobileSAM layout?)" if isinstance(obj, dict) and obj \
            and all(isinstance(v, torch.Tensor) for v in obj.values()) else type(obj).__name__
        raise CheckpointMismatch(f"{path.name}: not a SAM 2 checkpoint: expected a dict with key "
                                 f"'model', got {kind}")
    state = obj["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatch(f"{path.name}: 'model' is not a state dict of tensors")
    return state


def describe_sam2_architecture(name: str) -> str:
    """Short description for error messages, e.g. ``sam2.1_hiera_tiny (Hiera, width 96,
    12 blocks)``."""
    t = SAM2_CONFIGS[name].trunk
    return f"{name} (Hiera, width {t.embed_dim}, {t.depth} blocks)"


def detect_sam2_architecture(state_dict: dict[str, torch.Tensor],
                             source: str = "checkpoint") -> str:
    """Name of the SAM 2.1 size a state dict belongs to, from the Hiera trunk's width
    (``image_encoder.trunk.pos_embed``, (1, C, h, w)) and block count.

    Raises:
        CheckpointMismatch: no Hiera trunk keys, or a width/depth of no known size.
    """
    key = "image_encoder.trunk.pos_embed"
    if key not in state_dict or not any(k.startswith("sam_mask_decoder.") for k in state_dict):
        sample = ", ".join(list(state_dict)[:5])
        raise CheckpointMismatch(f"{source}: not a SAM 2 checkpoint (no {key} / sam_mask_decoder.* "
                                 f"keys; first keys: {sample or 'none'})")
    width = state_dict[key].shape[1]
    blocks = {k.split(".")[3] for k in state_dict if k.startswith("image_encoder.trunk.blocks.")}
    for name, cfg in SAM2_CONFIGS.items():
        if (cfg.trunk.embed_dim, cfg.trunk.depth) == (width, len(blocks)):
            return name
    known = ", ".join(f"{n} ({c.trunk.embed_dim}, {c.trunk.depth})" for n, c in SAM2_CONFIGS.items())
    raise CheckpointMismatch(f"{source}: Hiera trunk with width {width} and {len(blocks)} blocks "
                             f"matches none of {known}")


def image_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` without the video-only keys (:func:`is_video_only_key`)."""
    return {k: v for k, v in state_dict.items() if not is_video_only_key(k)}


def load_sam2(name_or_path: str | Path, device: str | torch.device = "cpu",
              arch: str | None = None) -> Sam2:
    """Build a SAM 2.1 image model and load an official checkpoint into it, strictly.

    Args:
        name_or_path: a known name (``sam2.1_hiera_tiny``, ``_small``, ``_base_plus``,
            ``_large``), fetched and verified into the cache on first use (only the files
            with a published sha256: tiny and large); or the path of an official file, whose
            size is detected from its keys and shapes.
        device: where the model lives.
        arch: optional expected size; a file of another size is refused.

    Returns:
        :class:`Sam2` in eval mode on ``device``.

    Raises:
        KeyError: ``arch`` is not a SAM 2.1 size.
        CheckpointError: the file cannot be found, fetched or verified (a known name without
            a published sha256 is never downloaded: pass the file's path).
        CheckpointMismatch: the file is not a SAM 2 checkpoint, is of another size than
            asked, or its image-mode keys/shapes differ from the model's.
    """
    if arch is not None and arch not in SAM2_CONFIGS:
        raise KeyError(f"unknown SAM 2 model {arch!r}; known: {sorted(SAM2_CONFIGS)}")
    key = str(name_or_path)
    if key in SAM2_CONFIGS and not Path(key).exists():
        if arch is not None and arch != key:
            raise CheckpointMismatch(f"{key} was given with arch={arch!r}")
        path, expected = fetch_checkpoint(key), key
    else:
        path, expected = Path(key), arch
    state = read_sam2_state_dict(path)
    found = detect_sam2_architecture(state, source=path.name)
    if expected is not None and found != expected:
        raise CheckpointMismatch(f"{path.name} holds {describe_sam2_architecture(found)} weights, "
                                 f"but {describe_sam2_architecture(expected)} was asked for")
    model = Sam2(SAM2_CONFIGS[found])
    state = image_state_dict(state)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


__all__ = ["VIDEO_ONLY_KEY_PREFIXES", "is_video_only_key", "read_sam2_state_dict",
           "detect_sam2_architecture", "describe_sam2_architecture", "image_state_dict",
           "load_sam2"]
