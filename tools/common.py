"""What the tools share: ``KEY=VALUE`` parameter overrides, and the reference generators
(test-only oracles: ``pip install -e ".[test]"``) with the parameters of one of our
configurations: MobileSAM's ``SamAutomaticMaskGenerator`` (:func:`make_reference_generator`),
per model family the official generator beside our model with the same weights
(:data:`REFERENCE_FAMILIES`, :func:`reference_pair`: SAM v1, SAM 2.1), and for SAM-HQ and
EfficientSAM a random-weight pair of ours and the family's reference
(:data:`RANDOM_WEIGHT_FAMILIES`, :func:`random_weight_pair`).

The tools put the repository root on ``sys.path`` and import this as ``tools.common``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from amg.config import AMGConfig, ConfigError

__all__ = ["REFERENCE_DIST", "REFERENCE_PARAMS", "reference_params", "make_reference_generator",
           "ReferenceFamily", "REFERENCE_FAMILIES", "reference_family", "reference_pair",
           "seeded_weights_", "parse_value", "parse_overrides", "RandomWeightPair",
           "RANDOM_WEIGHT_FAMILIES", "random_weight_pair", "lowered_filters"]

#: The distribution holding the reference generator.
REFERENCE_DIST = "mobilesam-lite"
#: The :class:`AMGConfig` fields the reference ``SamAutomaticMaskGenerator`` takes.
REFERENCE_PARAMS = ("points_per_side", "points_per_batch", "pred_iou_thresh",
                    "stability_score_thresh", "stability_score_offset", "box_nms_thresh",
                    "crop_n_layers", "crop_nms_thresh", "crop_overlap_ratio",
                    "crop_n_points_downscale_factor", "point_grids", "min_mask_region_area")


def reference_params(cfg: AMGConfig, family: str = "sam") -> dict[str, Any]:
    """A reference generator's keyword arguments for ``cfg``: the family's
    (:data:`REFERENCE_FAMILIES`; SAM v1's :data:`REFERENCE_PARAMS` by default), with the
    family's defaults in place of ``None`` fields (:meth:`AMGConfig.for_family`, mask
    threshold 0.0); ``points_per_side`` is ``None`` when ``cfg`` has ``point_grids``."""
    cfg = cfg.for_family(family, 0.0)
    params = {k: getattr(cfg, k) for k in REFERENCE_FAMILIES[family].params}
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


def seeded_weights_(module: Any, seed: int) -> None:
    """Replace every floating parameter and buffer of ``module`` (in place) by seeded noise, n
    standard normal drawn in state-dict order from ``torch.Generator().manual_seed(seed)``:
    a prompt encoder's Gaussian frequency matrix ``n`` (its official scale), weights of 1-d
    norm layers ``1 + 0.1 n``, the last layer of the hypernetwork MLPs ``2 n`` (so that mask
    logits spread beyond the +-32 clamp, as trained models' do), everything else ``0.05 n``.
    Used where no checkpoint is at hand: the official model and ours then hold the same
    random weights."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("positional_encoding_gaussian_matrix"):
                t.copy_(noise)
            elif "output_hypernetworks_mlps" in name and ".layers.2." in name:
                t.copy_(2.0 * noise)
            elif t.ndim == 1 and name.endswith(".weight") and "norm" in name:
                t.copy_(1.0 + 0.1 * noise)
            else:
                t.copy_(0.05 * noise)


#: The official SAM 2.1 model configs inside the ``sam2`` package, by our model name.
SAM2_OFFICIAL_CONFIGS = {
    "sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def _sam_pair(name: str, params: dict[str, Any], device: str, seed: int,
              checkpoint: Path | None) -> tuple[Any, Any]:
    """MobileSAM with its verified weights, ours and the reference's (seed, checkpoint unused)."""
    from sam_model import load_model
    return load_model(name, device=device), make_reference_generator(params, device)


def _sam2_pair(name: str, params: dict[str, Any], device: str, seed: int,
               checkpoint: Path | None) -> tuple[Any, Any]:
    """The official SAM 2.1 model (``build_sam2``) with the checkpoint's weights, or seeded
    random ones (:func:`seeded_weights_`), its ``SAM2AutomaticMaskGenerator``, and our
    :class:`sam_model.Sam2` with the same weights (loaded strictly)."""
    import torch
    from sam_model import Sam2, SAM2_CONFIGS, load_model
    from sam_model.sam2_checkpoints import image_state_dict
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
        from sam2.build_sam import build_sam2
        official = build_sam2(SAM2_OFFICIAL_CONFIGS[name],
                              None if checkpoint is None else str(checkpoint), device="cpu")
    if checkpoint is None:
        seeded_weights_(official, seed)
        ours = Sam2(SAM2_CONFIGS[name])
        ours.load_state_dict(image_state_dict(official.state_dict()), strict=True)
        ours = ours.to(device).eval()
    else:
        ours = load_model(checkpoint, device=device, arch=name)
    official = official.to(torch.device(device)).eval()
    return ours, SAM2AutomaticMaskGenerator(official, output_mode="coco_rle", **params)


@dataclass(frozen=True)
class ReferenceFamily:
    """How the tools put one model family's official generator beside our model.

    Attributes:
        dist: the distribution holding the official generator (a test-only oracle).
        names: our model names it covers.
        params: the :class:`AMGConfig` fields the official generator takes.
        build: ``(name, params, device, seed, checkpoint) -> (our model, official generator)``
            with the same weights in both: the checkpoint's, or seeded random ones where the
            family has no checkpoint at hand (``checkpoint`` None). The generator returns COCO
            RLE records. Raises ImportError when ``dist`` is not installed.
        random_weights: whether ``checkpoint=None`` means seeded random weights.
    """

    dist: str
    names: tuple[str, ...]
    params: tuple[str, ...]
    build: Callable[[str, dict[str, Any], str, int, Path | None], tuple[Any, Any]]
    random_weights: bool


#: The families ``tools/bench.py --model`` knows, by ``model.family``.
REFERENCE_FAMILIES: dict[str, ReferenceFamily] = {
    "sam": ReferenceFamily(REFERENCE_DIST, ("mobile_sam",), REFERENCE_PARAMS, _sam_pair, False),
    "sam2": ReferenceFamily("sam2", tuple(SAM2_OFFICIAL_CONFIGS),
                            REFERENCE_PARAMS + ("mask_threshold", "multimask_output", "use_m2m"),
                            _sam2_pair, True),
}


def reference_family(name: str) -> str:
    """The :data:`REFERENCE_FAMILIES` key covering model ``name``.

    Raises:
        ConfigError: no family covers it (the message lists the names that work).
    """
    for family, ref in REFERENCE_FAMILIES.items():
        if name in ref.names:
            return family
    known = [n for ref in REFERENCE_FAMILIES.values() for n in ref.names]
    raise ConfigError(f"--model {name}: no reference generator for it; known: {known}")


def reference_pair(name: str, cfg: AMGConfig, device: str = "cpu", seed: int = 0,
                   checkpoint: Path | None = None) -> tuple[Any, Any]:
    """Our model ``name`` and its family's official generator with ``cfg``'s parameters
    (:func:`reference_params`), the same weights in both (:class:`ReferenceFamily`).

    Raises:
        ConfigError: no reference family covers ``name``.
        ImportError: the family's official package is not installed.
    """
    family = reference_family(name)
    ref = REFERENCE_FAMILIES[family]
    return ref.build(name, reference_params(cfg, family), device, seed, checkpoint)


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


# --------------------------------------------------------------------------------------------
# Random-weight pairs: ours and a family's reference with the same seeded weights
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomWeightPair:
    """Our model and a reference generator over the official model, same seeded weights.

    Attributes:
        ours: our model (``sam_model``), eval mode.
        reference: ``(H, W, 3) uint8 RGB -> records`` (COCO RLE ``segmentation``), the
            family's reference generator with the configuration's parameters.
        description: what the reference is, for the report.
    """

    ours: Any
    reference: Callable[[np.ndarray], list[dict]]
    description: str


def _need(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"the reference needs {module} ({extra})")


def _sam_hq_pair(name: str, cfg: AMGConfig, seed: int, device: str) -> RandomWeightPair:
    """SAM-HQ: ``segment_anything_hq``'s ``SamAutomaticMaskGenerator``; ``hq_token_only``
    reaches its predictor's ``predict_torch`` (the generator itself has no such parameter)."""
    _need("segment_anything_hq", 'the test extra, pip install -e ".[test]"')
    from tests import hq_oracle
    ours, ref_model = hq_oracle.random_pair(name, seed)
    hq_oracle.shape_for_grids_((ours, ref_model))
    ours.to(device)
    gen = hq_oracle.oracle().SamAutomaticMaskGenerator(ref_model.to(device), output_mode="coco_rle",
                                                       **reference_params(cfg))
    if cfg.hq_token_only:
        gen.predictor.predict_torch = functools.partial(gen.predictor.predict_torch,
                                                        hq_token_only=True)
    return RandomWeightPair(ours, gen.generate, "segment_anything_hq SamAutomaticMaskGenerator")


def _efficient_sam_pair(name: str, cfg: AMGConfig, seed: int, device: str) -> RandomWeightPair:
    """EfficientSAM: the straightforward grid generator over the official model
    (``tests/grid_generators.py``: grid, IoU filter, stability score, box NMS; no crops, no
    small-region clean-up)."""
    from tests import efficient_sam_oracle, grid_generators
    from pycocotools import mask as mask_utils
    unsupported = {k: getattr(cfg, k) for k in ("crop_n_layers", "min_mask_region_area")
                   if getattr(cfg, k)}
    if cfg.point_grids is not None or unsupported:
        raise ConfigError(f"the EfficientSAM reference (a plain grid generator) has no crops, "
                          f"explicit grids or small-region clean-up: {unsupported or 'point_grids'}")
    if device != "cpu":
        raise ConfigError("the EfficientSAM reference runs on the CPU only")
    ours, oracle = efficient_sam_oracle.random_pair(name, seed)
    efficient_sam_oracle.shape_decoder_for_grids_(ours)
    efficient_sam_oracle.shape_decoder_for_grids_(oracle)
    params = grid_generators.GridParams(
        cfg.points_per_side, cfg.points_per_batch, cfg.pred_iou_thresh,
        cfg.stability_score_thresh, cfg.stability_score_offset, cfg.box_nms_thresh)

    def generate(image: np.ndarray) -> list[dict]:
        masks = grid_generators.efficient_sam_oracle_grid_masks(oracle, image, params)
        return [{"segmentation": mask_utils.encode(np.asfortranarray(m.segmentation.astype(np.uint8))),
                 "area": int(m.segmentation.sum()), "bbox": m.bbox_xywh,
                 "predicted_iou": m.predicted_iou, "stability_score": m.stability_score,
                 "point_coords": [list(m.point_xy)]} for m in masks]
    return RandomWeightPair(ours, generate, "grid generator over the official EfficientSAM")


#: Per family (``sam_model.model_table`` labels): the pair builder, and the filters lowered so
#: that random-weight masks pass (the whole-generator parity tests' values), applied before the
#: user's overrides.
RANDOM_WEIGHT_FAMILIES: dict[str, tuple[Callable[..., RandomWeightPair], dict[str, Any]]] = {
    "SAM-HQ": (_sam_hq_pair, {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.5,
                              "box_nms_thresh": 1.0}),
    "EfficientSAM": (_efficient_sam_pair, {"pred_iou_thresh": 0.02, "stability_score_thresh": 0.6,
                                           "box_nms_thresh": 1.0}),
}


def random_weight_pair(name: str, cfg: AMGConfig, seed: int = 0,
                       device: str = "cpu") -> RandomWeightPair:
    """Ours and the family's reference for model ``name`` with the same seeded random weights
    (the parity tests' weights: ``tests/hq_oracle.py``, ``tests/efficient_sam_oracle.py``, so
    the test extra and ``../shared/oracles`` are needed).

    Raises:
        KeyError: ``name`` is not a model of a family in :data:`RANDOM_WEIGHT_FAMILIES`.
        ImportError: the reference is not installed.
        ConfigError: ``cfg`` uses a step the reference does not have.
    """
    from sam_model import model_table
    family = {m.name: m.family for m in model_table()}.get(name)
    if family not in RANDOM_WEIGHT_FAMILIES:
        raise KeyError(f"{name}: no random-weight reference (families: "
                       f"{', '.join(RANDOM_WEIGHT_FAMILIES)})")
    return RANDOM_WEIGHT_FAMILIES[family][0](name, cfg, seed, device)


def lowered_filters(name: str) -> dict[str, Any]:
    """The random-weight filter values of ``name``'s family (:data:`RANDOM_WEIGHT_FAMILIES`),
    or ``{}`` for a model with real weights."""
    from sam_model import model_table
    family = {m.name: m.family for m in model_table()}.get(name)
    return dict(RANDOM_WEIGHT_FAMILIES[family][1]) if family in RANDOM_WEIGHT_FAMILIES else {}
