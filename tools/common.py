"""What the tools share: ``KEY=VALUE`` parameter overrides, and the reference generator (MobileSAM's
``SamAutomaticMaskGenerator``, a test-only oracle: ``pip install -e ".[test]"``) with the
parameters of one of our configurations.

The tools put the repository root on ``sys.path`` and import this as ``tools.common``.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from amg.config import AMGConfig, ConfigError

__all__ = ["REFERENCE_DIST", "REFERENCE_PARAMS", "reference_params", "make_reference_generator",
           "parse_value", "parse_overrides"]

#: The distribution holding the reference generator.
REFERENCE_DIST = "mobilesam-lite"
#: The :class:`AMGConfig` fields the reference ``SamAutomaticMaskGenerator`` takes.
REFERENCE_PARAMS = ("points_per_side", "points_per_batch", "pred_iou_thresh",
                    "stability_score_thresh", "stability_score_offset", "box_nms_thresh",
                    "crop_n_layers", "crop_nms_thresh", "crop_overlap_ratio",
                    "crop_n_points_downscale_factor", "point_grids", "min_mask_region_area")


def reference_params(cfg: AMGConfig) -> dict[str, Any]:
    """The reference generator's keyword arguments for ``cfg`` (:data:`REFERENCE_PARAMS`;
    ``points_per_side`` is ``None`` when ``cfg`` has ``point_grids``)."""
    params = {k: getattr(cfg, k) for k in REFERENCE_PARAMS}
    if params["point_grids"] is not None:
        params["points_per_side"] = None
    return params


def make_reference_generator(params: dict[str, Any], device: str = "cpu") -> Any:
    """The reference ``SamAutomaticMaskGenerator`` (model ``vit_t`` with our verified
    ``mobile_sam.pt``, on ``device``) with ``output_mode="coco_rle"`` and ``params``
    (:func:`reference_params`).

    Raises:
        ImportError: the reference (``mobilesam-lite``, the test extra) is not installed.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobilesam_lite.mobile_sam import SamAutomaticMaskGenerator, sam_model_registry
    from sam_model.checkpoints import fetch_checkpoint
    model = sam_model_registry["vit_t"](checkpoint=str(fetch_checkpoint("mobile_sam"))).eval()
    model.to(device)
    return SamAutomaticMaskGenerator(model, output_mode="coco_rle", **params)


def parse_value(text: str, plain_strings: bool = False) -> Any:
    """An override value: ``None``/``none`` is ``None``, else JSON (``16``, ``0.8``, ``null``,
    ``[..]``, ``"bfloat16"``).

    Args:
        text: the value.
        plain_strings: text that is not JSON is taken as a string (``bfloat16``) instead of
            raising.

    Raises:
        ValueError: ``text`` is not JSON (and not ``plain_strings``).
    """
    if text in ("None", "none"):
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        if plain_strings:
            return text
        raise ValueError(f"value is not JSON ({getattr(exc, 'msg', exc)})") from None


def parse_overrides(items: list[str], source: str = "--set",
                    plain_strings: bool = False) -> dict[str, Any]:
    """``["points_per_side=16", ...]`` to ``{"points_per_side": 16}`` (values: :func:`parse_value`).

    Args:
        items: ``KEY=VALUE`` strings (key and value stripped).
        source: what the items came from, for the error messages (``--set``, ``--preset X``).
        plain_strings: see :func:`parse_value`.

    Raises:
        ConfigError: an item without ``=`` or a value that is not JSON (names ``source`` and
            the item).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{source}: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = parse_value(value.strip(), plain_strings)
        except ValueError as exc:
            raise ConfigError(f"{source} {item!r}: {exc}") from None
    return out
