"""``AMGConfig``: every mask-generation parameter in one validated dataclass.

Names and defaults are exactly those of the reference ``SamAutomaticMaskGenerator``, and of
``SAM2AutomaticMaskGenerator`` for the options only SAM 2 has. A default that differs between
the model families' official generators is ``None`` here ("the model family's"), filled in from
:data:`FAMILY_DEFAULTS` when a generator is built for a model (:meth:`AMGConfig.for_family`).
YAML presets (``configs/*.yaml``) and CLI flags fill it. Unknown names are rejected (no
``**kwargs`` that swallow a typo).

Each field carries its one-line description, its choices and how to show its default in its
metadata; :func:`parameters` reads them with the field's type and default, so the command-line
flags (:mod:`amg.dataset.cli`) are derived from this one place.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
# Upper bounds of the size parameters, so that a mistyped value fails at once instead of trying
# to allocate what it implies (points_per_side 100000 is a 10^10-point grid, 75 GiB in float64):
# at most one grid point per pixel of the 1024-pixel model input; batches and decoder chunks
# whose per-prompt tensors stay within about 1 GB; crop layers up to 4 (4**4 = 256 crops in the
# deepest layer, 341 image-encoder passes per image).
MAX_POINTS_PER_SIDE = 1024
MAX_POINTS_PER_BATCH = 1024
MAX_DECODER_CHUNK_SIZE = 256
MAX_CROP_LAYERS = 4
COMPUTE_DTYPES = ("float32", "bfloat16", "auto")


class ConfigError(ValueError):
    """A generation parameter or preset is invalid; the message names it."""


def _param(default: Any, help: str, *, choices: tuple[str, ...] | None = None,
           default_text: str | None = None, flag: bool = True) -> Any:
    """A field of :class:`AMGConfig` with its one-line description (see :func:`parameters`)."""
    return field(default=default, metadata={"help": help, "choices": choices,
                                            "default_text": default_text, "flag": flag})


@dataclass
class AMGConfig:
    """Parameters of automatic mask generation (reference ``SamAutomaticMaskGenerator``).

    Attributes:
        points_per_side: grid points along each image side (grid of n*n), at most
            :data:`MAX_POINTS_PER_SIDE`; ``None`` when ``point_grids`` is given.
        points_per_batch: prompts decoded per batch (at most :data:`MAX_POINTS_PER_BATCH`);
            changes memory, not the output.
        pred_iou_thresh: keep masks whose predicted IoU is > this (0 disables the filter).
            ``None`` (default): the model family's (:data:`FAMILY_DEFAULTS`: 0.88, SAM 2 0.8).
        stability_score_thresh: keep masks whose stability score is >= this (0 disables).
        stability_score_offset: logit offset of the stability score (paper §B).
        box_nms_thresh: box IoU above which box NMS drops the lower-scored mask in a crop.
        crop_n_layers: extra crop layers (at most :data:`MAX_CROP_LAYERS`); layer i has
            (2**i)**2 crops.
        crop_nms_thresh: box IoU of the NMS across crops (smaller crops preferred).
        crop_overlap_ratio: crop overlap as a fraction of the image's short side (layer 1).
        crop_n_points_downscale_factor: points per side shrink by this per crop layer.
        point_grids: explicit grids, one (N_i, 2) array of xy in [0, 1] per crop layer.
        min_mask_region_area: disconnected regions and holes below this many pixels are
            removed (0 disables; uses OpenCV).
        output_mode: ``binary_mask``, ``uncompressed_rle`` or ``coco_rle``.
        hq_token_only: the HQ token's mask alone instead of the SAM mask plus the HQ mask. A
            SAM-HQ point-decoder option (other families refuse it): ``None`` (default) is the
            family's (False, as the reference SAM-HQ ``SamAutomaticMaskGenerator``, whose
            predictor call keeps ``predict_torch``'s default).
        decoder_chunk_size: prompts per mask-decoder call inside a batch (at most
            :data:`MAX_DECODER_CHUNK_SIZE`); an internal
            cache-size knob that does not change the output (in float32; in bfloat16 at most
            by rounding). ``None`` (default): 4 in float32, 8 in bfloat16, the fastest of
            2/4/8/16 on a 2-core CPU (docs/benchmarks.md).
        input_size: not in the reference. Side of the square model input in pixels (the
            longest image or crop side is resized to it); ``None`` (default) keeps the
            model's own (1024, exactly as the reference). A multiple of 16 in [256, 4096];
            larger values give small objects more image tokens at (input_size / 1024)**2
            times the decoder cost (:meth:`sam_model.Sam.with_input_size`).
        compute_dtype: not in the reference. ``"float32"`` (default) computes exactly what the
            reference computes. ``"bfloat16"`` runs the image encoder and the mask decoder's
            per-prompt work in bfloat16 (scores, thresholds and post-processing stay float32):
            an approximation for the fast presets, several times faster per matrix product on
            CPUs with AVX512-BF16 or AMX (and GPUs), slower on CPUs without them; masks near a
            threshold can flip (docs/benchmarks.md gives the measured recall). ``"auto"``:
            bfloat16 where the device has native bfloat16 matrix arithmetic
            (:func:`sam_model.sam.has_native_bfloat16`), else float32.
        max_masks: not in the reference. Keep at most this many masks per image (after every
            other step), ranked by predicted IoU minus ``nested_mask_penalty`` per larger mask
            that contains the mask (:func:`amg.ranking.rank_masks`); the survivors keep the
            generator's order. ``None`` (default) keeps every mask, as the reference.
        nested_mask_penalty: not in the reference; >= 0. See ``max_masks`` (used only when an
            image has more than ``max_masks`` masks). 0 (default) ranks by predicted IoU alone.
        duplicate_mask_iou: not in the reference; in (0, 1] or ``None`` (default, off). With
            ``max_masks``: in the budget's ranking, a mask whose mask IoU with a better-ranked
            mask exceeds this goes behind every other mask (main and reserve masks apart), so
            the places go to distinct masks first; it is kept when the budget has room
            (:func:`amg.ranking.defer_duplicates`).
        reserve_pred_iou_thresh: not in the reference; in [0, 1] or ``None`` (default, off).
            With ``reserve_stability_score_thresh`` (both or neither) and ``max_masks``: masks
            that fail the main filters but pass these looser ones are *reserve* masks. They
            never displace a main mask (box NMS and the budget rank every main mask first)
            and only fill the places left below ``max_masks`` (:func:`amg.ranking.rank_masks`).
        reserve_stability_score_thresh: see ``reserve_pred_iou_thresh``; in [0, 1] or ``None``.
        refine_crop_n_layers: not in the reference; in [0, :data:`MAX_CROP_LAYERS`]. With n >= 1 each kept mask is decoded
            once more in a zoomed crop of crop layers 1..n (the deepest crop that holds its box
            with a margin), prompted by its box and its grid point (single-mask output), and
            replaced when the new mask agrees with it (mask IoU >= 0.7) and has a predicted IoU
            at least as high (:mod:`amg.refine`). 0 (default) refines nothing.
        fill_holes: not in the reference. Fill every hole of each kept mask (a background
            region that does not reach the image border) as the last step
            (:func:`amg.regions.fill_holes`). False (default) keeps SAM's masks as they are.
        island_area_frac: not in the reference; in [0, 1). After ``fill_holes``, drop each kept
            mask's disconnected regions smaller than this fraction of its largest region
            (:func:`amg.regions.remove_minor_islands`). 0 (default) drops nothing.
        mask_threshold: ``SAM2AutomaticMaskGenerator``'s: the logit above which a pixel is in
            a mask (binarisation, stability score, crop-edge test). ``None`` (default): the
            model's ``mask_threshold`` (0.0 in every family).
        multimask_output: ``SAM2AutomaticMaskGenerator``'s: three outputs per grid point
            (True) or one (False; SAM 2 then picks token 0's mask, or the best multimask one
            when token 0's is unstable). A point-decoder option: ``None`` (default) is the
            family's (True; SAM v1 / MobileSAM decoders have no choice and refuse the option).
        use_m2m: ``SAM2AutomaticMaskGenerator``'s mask-to-mask refinement: every first-pass
            output (before any filter) is decoded again from its point and its own low-res
            logits as mask input, single-mask output; the filters then apply to the refined
            masks. A SAM 2 point-decoder option: ``None`` (default) is the family's (False);
            other families refuse it.
    """

    points_per_side: int | None = _param(
        32, "grid points along each image side, at most 1024: n x n prompts in crop layer 0")
    points_per_batch: int = _param(64, "prompts decoded per batch, at most 1024 (memory, not the output)")
    pred_iou_thresh: float | None = _param(
        None, "keep masks whose predicted IoU is above this (0: off)",
        default_text="the model family's: 0.88, SAM 2 0.8")
    stability_score_thresh: float = _param(
        0.95, "keep masks whose stability score is at least this (0: off)")
    stability_score_offset: float = _param(
        1.0, "logit offset of the stability score's two thresholds")
    box_nms_thresh: float = _param(
        0.7, "box IoU above which NMS in a crop drops the lower-scored mask")
    crop_n_layers: int = _param(0, "extra crop layers, at most 4; layer i has (2**i)**2 crops")
    crop_nms_thresh: float = _param(
        0.7, "box IoU of the NMS across crops (smaller crops preferred)")
    crop_overlap_ratio: float = _param(
        512 / 1500, "crop overlap as a fraction of the image's short side (layer 1)")
    crop_n_points_downscale_factor: int = _param(
        1, "points per side shrink by this factor per crop layer")
    point_grids: list[np.ndarray] | None = _param(
        None, "explicit point grids, one (N, 2) array of xy in [0, 1] per crop layer",
        flag=False)
    min_mask_region_area: int = _param(
        0, "remove disconnected regions and holes below this many pixels (0: off)")
    output_mode: str = _param("binary_mask", "segmentation encoding of the records",
                              choices=OUTPUT_MODES, flag=False)
    hq_token_only: bool | None = _param(
        None, "SAM-HQ: the HQ token's mask alone, not SAM mask + HQ mask", default_text="false")
    decoder_chunk_size: int | None = _param(
        None, "prompts per mask-decoder call inside a batch, at most 256 (speed, not the output)",
        default_text="4 in float32, 8 in bfloat16")
    input_size: int | None = _param(
        None, "side of the square model input in pixels, a multiple of 16 in [256, 4096]",
        default_text="the model's own, 1024")
    compute_dtype: str = _param(
        "float32", "arithmetic of the image encoder and the mask decoder's per-prompt work",
        choices=COMPUTE_DTYPES)
    max_masks: int | None = _param(
        None, "keep at most this many masks per image, ranked by predicted IoU",
        default_text="no limit")
    nested_mask_penalty: float = _param(
        0.0, "ranking penalty per larger mask containing a mask (with --max-masks)")
    duplicate_mask_iou: float | None = _param(
        None, "rank masks overlapping a better-ranked one beyond this mask IoU last (with --max-masks)",
        default_text="off")
    reserve_pred_iou_thresh: float | None = _param(
        None, "predicted-IoU threshold of reserve masks, which fill free places of --max-masks",
        default_text="off")
    reserve_stability_score_thresh: float | None = _param(
        None, "stability threshold of reserve masks (with --reserve-pred-iou-thresh)",
        default_text="off")
    refine_crop_n_layers: int = _param(
        0, "decode each kept mask again in a zoomed crop of crop layers 1..n, n <= 4 (0: off)")
    fill_holes: bool = _param(False, "fill every hole of each kept mask")
    island_area_frac: float = _param(
        0.0, "drop regions of a mask smaller than this fraction of its largest region (0: off)")
    # Options of SAM 2's generator (SAM2AutomaticMaskGenerator's names).
    mask_threshold: float | None = _param(
        None, "mask logit threshold (binarisation and stability score)",
        default_text="the model's, 0.0")
    multimask_output: bool | None = _param(
        None, "three masks per grid point instead of one (SAM 2, SAM-HQ, EfficientSAM)",
        default_text="true")
    use_m2m: bool | None = _param(
        None, "SAM 2: decode every mask again from its own low-res mask and point",
        default_text="false")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every parameter.

        Raises:
            ConfigError: naming the parameter and the accepted range.
        """
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need((self.points_per_side is None) != (self.point_grids is None),
             "exactly one of points_per_side and point_grids must be given")
        if self.points_per_side is not None:
            need(_is_int(self.points_per_side) and 1 <= self.points_per_side <= MAX_POINTS_PER_SIDE,
                 f"points_per_side must be an integer in [1, {MAX_POINTS_PER_SIDE}] (at most one "
                 f"grid point per model-input pixel), got {self.points_per_side!r}")
        if self.point_grids is not None:
            need(len(self.point_grids) == self.crop_n_layers + 1,
                 f"point_grids has {len(self.point_grids)} grids, crop_n_layers + 1 = "
                 f"{self.crop_n_layers + 1} needed")
            for i, g in enumerate(self.point_grids):
                g = np.asarray(g)
                need(g.ndim == 2 and g.shape[1] == 2 and len(g) > 0,
                     f"point_grids[{i}] must have shape (N, 2), got {g.shape}")
                need(bool(((g >= 0) & (g <= 1)).all()),
                     f"point_grids[{i}] must hold xy in [0, 1]")
        for name in ("points_per_batch", "crop_n_points_downscale_factor", "decoder_chunk_size"):
            v = getattr(self, name)
            if name == "decoder_chunk_size" and v is None:
                continue
            need(_is_int(v) and v >= 1, f"{name} must be an integer >= 1, got {v!r}")
        for name, top in (("points_per_batch", MAX_POINTS_PER_BATCH),
                          ("decoder_chunk_size", MAX_DECODER_CHUNK_SIZE)):
            v = getattr(self, name)
            need(v is None or v <= top, f"{name} must be at most {top} (prompts held in memory at "
                                        f"once), got {v!r}")
        for name in ("crop_n_layers", "min_mask_region_area", "refine_crop_n_layers"):
            v = getattr(self, name)
            need(_is_int(v) and v >= 0, f"{name} must be an integer >= 0, got {v!r}")
        for name in ("crop_n_layers", "refine_crop_n_layers"):
            v = getattr(self, name)
            need(v <= MAX_CROP_LAYERS, f"{name} must be at most {MAX_CROP_LAYERS} (layer i has "
                                       f"(2**i)**2 crops: 256 in layer 4), got {v!r}")
        need(self.pred_iou_thresh is None or (_is_num(self.pred_iou_thresh)
                                              and 0.0 <= self.pred_iou_thresh <= 1.0),
             f"pred_iou_thresh must be in [0, 1] (or None), got {self.pred_iou_thresh!r}")
        for name in ("stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
            v = getattr(self, name)
            need(_is_num(v) and 0.0 <= v <= 1.0, f"{name} must be in [0, 1], got {v!r}")
        need(_is_num(self.stability_score_offset) and self.stability_score_offset >= 0,
             f"stability_score_offset must be >= 0, got {self.stability_score_offset!r}")
        need(_is_num(self.crop_overlap_ratio) and 0.0 <= self.crop_overlap_ratio < 1.0,
             f"crop_overlap_ratio must be in [0, 1), got {self.crop_overlap_ratio!r}")
        if self.input_size is not None:
            need(_is_int(self.input_size) and self.input_size % 16 == 0
                 and 256 <= self.input_size <= 4096,
                 f"input_size must be a multiple of 16 in [256, 4096] (or None), "
                 f"got {self.input_size!r}")
        if self.max_masks is not None:
            need(_is_int(self.max_masks) and self.max_masks >= 1,
                 f"max_masks must be an integer >= 1 (or None), got {self.max_masks!r}")
        need(_is_num(self.nested_mask_penalty) and self.nested_mask_penalty >= 0,
             f"nested_mask_penalty must be >= 0, got {self.nested_mask_penalty!r}")
        if self.duplicate_mask_iou is not None:
            need(_is_num(self.duplicate_mask_iou) and 0.0 < self.duplicate_mask_iou <= 1.0,
                 f"duplicate_mask_iou must be in (0, 1] (or None), got {self.duplicate_mask_iou!r}")
            need(self.max_masks is not None,
                 "duplicate_mask_iou orders the masks of a budget: set max_masks with it")
        reserve = (self.reserve_pred_iou_thresh, self.reserve_stability_score_thresh)
        need((reserve[0] is None) == (reserve[1] is None),
             "reserve_pred_iou_thresh and reserve_stability_score_thresh go together: "
             f"got {reserve[0]!r} and {reserve[1]!r}")
        if reserve[0] is not None:
            for name, v in zip(("reserve_pred_iou_thresh", "reserve_stability_score_thresh"), reserve):
                need(_is_num(v) and 0.0 <= v <= 1.0, f"{name} must be in [0, 1] (or None), got {v!r}")
            need(self.max_masks is not None,
                 "reserve masks only fill places left in a budget: set max_masks with "
                 "reserve_pred_iou_thresh / reserve_stability_score_thresh")
        need(_is_num(self.island_area_frac) and 0.0 <= self.island_area_frac < 1.0,
             f"island_area_frac must be in [0, 1), got {self.island_area_frac!r}")
        need(isinstance(self.fill_holes, bool),
             f"fill_holes must be true or false, got {self.fill_holes!r}")
        need(self.compute_dtype in COMPUTE_DTYPES,
             f"compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        need(self.output_mode in OUTPUT_MODES,
             f"output_mode must be one of {OUTPUT_MODES}, got {self.output_mode!r}")
        need(self.mask_threshold is None or (_is_num(self.mask_threshold)
                                             and bool(np.isfinite(self.mask_threshold))),
             f"mask_threshold must be a finite number (or None), got {self.mask_threshold!r}")
        for name in ("multimask_output", "use_m2m", "hq_token_only"):
            v = getattr(self, name)
            need(v is None or isinstance(v, bool), f"{name} must be true or false, got {v!r}")

    def for_family(self, family: str, mask_threshold: float) -> "AMGConfig":
        """This configuration with a model family's defaults in place of its ``None`` fields:
        those :data:`FAMILY_DEFAULTS` sets for ``family``, and ``mask_threshold``. Explicit
        values are kept. Fields the family has no default for stay ``None``.

        Args:
            family: the model's ``family`` (``"sam"``, ``"sam_hq"``, ``"sam2"``,
                ``"efficient_sam"``).
            mask_threshold: the model's ``mask_threshold``.

        Raises:
            ConfigError: ``family`` is not in :data:`FAMILY_DEFAULTS`.
        """
        if family not in FAMILY_DEFAULTS:
            raise ConfigError(f"unknown model family {family!r}; known: {sorted(FAMILY_DEFAULTS)}")
        defaults = {**FAMILY_DEFAULTS[family], "mask_threshold": mask_threshold}
        return dataclasses.replace(self, **{k: v for k, v in defaults.items()
                                            if getattr(self, k) is None})

    def replace(self, **changes: Any) -> "AMGConfig":
        """A validated copy with some parameters changed.

        Raises:
            ConfigError: an unknown parameter name or an invalid value.
        """
        check_names(changes)
        if "point_grids" in changes and changes["point_grids"] is not None:
            changes.setdefault("points_per_side", None)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "AMGConfig":
        """Load a preset file (a YAML mapping of parameter names), then apply overrides.

        Raises:
            ConfigError: unreadable file, not a mapping, unknown names or invalid values.
        """
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read preset ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a preset must be a mapping of parameter names")
        check_names(data, source=str(path))
        return cls().replace(**{**data, **overrides})

    @classmethod
    def from_preset(cls, name_or_path: str, **overrides: Any) -> "AMGConfig":
        """A named preset (``default``, ``crops``, ...) or a YAML path; see :func:`preset_path`."""
        return cls.from_yaml(preset_path(name_or_path), **overrides)


PARAMETER_NAMES = tuple(f.name for f in dataclasses.fields(AMGConfig))

#: The official generators' defaults where the families differ, by ``model.family``: the
#: values :meth:`AMGConfig.for_family` gives the fields left ``None``. SAM v1 / MobileSAM:
#: ``SamAutomaticMaskGenerator``; SAM-HQ: its copy of it; EfficientSAM (no official generator):
#: SAM's; SAM 2.1: ``SAM2AutomaticMaskGenerator`` (sam2 1.1.0).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "sam": {"pred_iou_thresh": 0.88},
    "sam_hq": {"pred_iou_thresh": 0.88, "hq_token_only": False},
    "efficient_sam": {"pred_iou_thresh": 0.88},
    "sam2": {"pred_iou_thresh": 0.8, "multimask_output": True, "use_m2m": False},
}


@dataclass(frozen=True)
class Parameter:
    """One :class:`AMGConfig` field as a setting: what a command-line flag needs.

    Attributes:
        name: the field name (flag ``--name-with-dashes``).
        type: ``int``, ``float``, ``str`` or ``bool`` (``None`` for fields no flag can set,
            such as ``point_grids``).
        default: the dataclass default.
        help: one-line description.
        choices: the accepted values of a ``str`` parameter, or ``None``.
        default_text: how to show a ``None`` default (``"off"``), or ``None`` to show the value.
        flag: whether the command line exposes it (``False``: presets and the API only).
    """

    name: str
    type: type | None
    default: Any
    help: str
    choices: tuple[str, ...] | None
    default_text: str | None
    flag: bool

    def default_label(self) -> str:
        """The default as shown in help texts: ``default_text``, else the value (floats to six
        decimals, booleans as ``true``/``false``)."""
        if self.default_text is not None:
            return self.default_text
        if isinstance(self.default, bool):
            return str(self.default).lower()
        if isinstance(self.default, float):
            return str(round(self.default, 6))
        return str(self.default)


def _scalar_type(hint: Any) -> type | None:
    """``int`` for ``int`` or ``int | None`` (likewise float, str, bool); else ``None``."""
    members = typing.get_args(hint) or (hint,)  # a union's members, or the type itself
    scalars = [a for a in members if a is not type(None)]
    return scalars[0] if len(scalars) == 1 and scalars[0] in (int, float, str, bool) else None


def parameters() -> list[Parameter]:
    """Every :class:`AMGConfig` field as a :class:`Parameter`, in field order (type from the
    annotation, default from the dataclass, the rest from the field's metadata)."""
    hints = typing.get_type_hints(AMGConfig)
    return [Parameter(name=f.name, type=_scalar_type(hints[f.name]), default=f.default,
                      help=f.metadata["help"], choices=f.metadata["choices"],
                      default_text=f.metadata["default_text"], flag=f.metadata["flag"])
            for f in dataclasses.fields(AMGConfig)]


def check_names(params: dict[str, Any], source: str = "parameters") -> None:
    """Raise ``ConfigError`` naming any key that is not an ``AMGConfig`` field."""
    unknown = sorted(set(params) - set(PARAMETER_NAMES))
    if unknown:
        raise ConfigError(f"{source}: unknown parameter(s) {unknown}; known: {list(PARAMETER_NAMES)}")


def preset_dirs() -> list[Path]:
    """Where named presets are looked up: the source tree's ``configs/`` (editable installs
    and checkouts), then ``<prefix>/share/segment-everything/configs`` (wheel installs)."""
    return [Path(__file__).resolve().parent.parent / "configs",
            Path(sys.prefix) / "share" / "segment-everything" / "configs"]


def preset_summaries() -> dict[str, str]:
    """Every named preset with its one-line summary, sorted by name: the preset file's
    ``# summary: ...`` line, else its first comment line, else ``""``. Where a name is in
    several :func:`preset_dirs`, the first one's file counts (as in :func:`preset_path`)."""
    out: dict[str, str] = {}
    for d in preset_dirs():
        for f in sorted(d.glob("*.yaml")) if d.is_dir() else ():
            if f.stem in out:
                continue
            try:
                comments = [ln[1:].strip() for ln in f.read_text().splitlines() if ln.startswith("#")]
            except OSError:
                comments = []
            tagged = [c[len("summary:"):].strip() for c in comments if c.startswith("summary:")]
            out[f.stem] = (tagged or comments or [""])[0]
    return dict(sorted(out.items()))


def preset_path(name_or_path: str) -> Path:
    """Resolve a preset name or a YAML path.

    Raises:
        ConfigError: neither an existing file nor a known preset name.
    """
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or "/" in str(name_or_path) or "\\" in str(name_or_path):
        if not p.is_file():
            raise ConfigError(f"preset file not found: {p}")
        return p
    for d in preset_dirs():
        cand = d / f"{name_or_path}.yaml"
        if cand.is_file():
            return cand
    known = sorted({c.stem for d in preset_dirs() if d.is_dir() for c in d.glob("*.yaml")})
    raise ConfigError(f"unknown preset {name_or_path!r}; known presets: {known}")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
