"""``AMGConfig``: reference defaults, validation (each error names its parameter), unknown
names, and the YAML presets in ``configs/``."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest

from amg.config import (COMPUTE_DTYPES, FAMILY_DEFAULTS, OUTPUT_MODES, PARAMETER_NAMES,
                        AMGConfig, ConfigError, parameters, preset_path)

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# Defaults
# --------------------------------------------------------------------------------------------


def test_defaults_equal_reference_generator_defaults():
    sa = pytest.importorskip("segment_anything")
    sig = inspect.signature(sa.SamAutomaticMaskGenerator.__init__)
    ref = {name: p.default for name, p in sig.parameters.items() if name not in ("self", "model")}
    assert len(ref) == 13  # the reference's parameter list, so a rename there is noticed
    cfg = AMGConfig().for_family("sam", 0.0)
    for name, default in ref.items():
        assert name in PARAMETER_NAMES, f"reference parameter {name} missing from AMGConfig"
        ours = getattr(cfg, name)
        if isinstance(default, float):
            assert ours == pytest.approx(default, rel=0, abs=1e-12), name
        else:
            assert ours == default, name
    # Our extra parameters: the internal decoder cache knob, and the model-input size, whose
    # default switches it off (the reference's behaviour).
    assert set(PARAMETER_NAMES) - set(ref) == {"decoder_chunk_size", "input_size",
                                               "compute_dtype", "max_masks",
                                               "nested_mask_penalty", "duplicate_mask_iou",
                                               "reserve_pred_iou_thresh",
                                               "reserve_stability_score_thresh",
                                               "refine_crop_n_layers", "fill_holes",
                                               "island_area_frac", "mask_threshold",
                                               "multimask_output", "use_m2m", "hq_token_only"}
    # SAM v1 has no multimask choice and no mask-to-mask pass: nothing is passed to its decoder.
    assert cfg.multimask_output is None and cfg.use_m2m is None and cfg.mask_threshold == 0.0
    assert cfg.hq_token_only is None
    assert cfg.input_size is None  # the model's own input size (1024), as the reference
    assert cfg.compute_dtype == "float32"  # the reference's arithmetic
    assert cfg.max_masks is None and cfg.nested_mask_penalty == 0.0  # every mask kept
    # no reserve masks, no refinement, no hole filling: the reference's masks as they are
    assert cfg.reserve_pred_iou_thresh is None and cfg.reserve_stability_score_thresh is None
    assert cfg.refine_crop_n_layers == 0 and cfg.fill_holes is False
    assert cfg.island_area_frac == 0.0


def test_sam2_family_defaults_equal_official_sam2_generator_defaults():
    sam2_amg = pytest.importorskip("sam2.automatic_mask_generator")
    sig = inspect.signature(sam2_amg.SAM2AutomaticMaskGenerator.__init__)
    ref = {name: p.default for name, p in sig.parameters.items()
           if name not in ("self", "model", "kwargs")}
    assert len(ref) == 16  # the official parameter list (sam2 1.1.0), so a change is noticed
    cfg = AMGConfig().for_family("sam2", 0.0)
    for name, default in ref.items():
        assert name in PARAMETER_NAMES, f"official SAM 2 parameter {name} missing from AMGConfig"
        ours = getattr(cfg, name)
        assert type(ours) is type(default), name
        if isinstance(default, float):
            assert ours == pytest.approx(default, rel=0, abs=1e-12), name
        else:
            assert ours == default, name


def test_family_defaults_fill_only_unset_fields():
    assert set(FAMILY_DEFAULTS) == {"sam", "sam_hq", "sam2", "efficient_sam"}
    cfg = AMGConfig(pred_iou_thresh=0.5, use_m2m=True, mask_threshold=0.25)
    sam2 = cfg.for_family("sam2", 0.0)
    assert (sam2.pred_iou_thresh, sam2.use_m2m, sam2.mask_threshold) == (0.5, True, 0.25)
    assert sam2.multimask_output is True  # unset: the family's
    assert AMGConfig().for_family("sam2", -1.5).mask_threshold == -1.5  # the model's
    assert AMGConfig().for_family("sam_hq", 0.0).pred_iou_thresh == 0.88
    assert AMGConfig().for_family("sam2", 0.0).for_family("sam", 0.0).pred_iou_thresh == 0.8
    with pytest.raises(ConfigError, match="unknown model family 'sam3'"):
        AMGConfig().for_family("sam3", 0.0)


@pytest.mark.parametrize("params, name", [
    ({"mask_threshold": float("nan")}, "mask_threshold"),
    ({"mask_threshold": "0"}, "mask_threshold"),
    ({"multimask_output": 1}, "multimask_output"),
    ({"use_m2m": "yes"}, "use_m2m"),
])
def test_sam2_options_validated(params, name):
    with pytest.raises(ConfigError, match=name):
        AMGConfig(**params)


def test_hq_token_only_default_equals_sam_hq_reference_generator():
    hq = pytest.importorskip("segment_anything_hq")
    # The HQ generator calls predict_torch without hq_token_only: the predictor's default.
    assert "hq_token_only" not in inspect.getsource(hq.SamAutomaticMaskGenerator._process_batch)
    default = inspect.signature(hq.SamPredictor.predict_torch).parameters["hq_token_only"].default
    assert default is False and AMGConfig().for_family("sam_hq", 0.0).hq_token_only is False


def test_defaults_hand_checked():
    cfg = AMGConfig()
    assert cfg.points_per_side == 32 and cfg.point_grids is None
    assert cfg.pred_iou_thresh is None and cfg.stability_score_thresh == 0.95  # None: family's
    assert cfg.mask_threshold is None and cfg.multimask_output is None and cfg.use_m2m is None
    assert cfg.crop_overlap_ratio == 512 / 1500
    assert cfg.output_mode == "binary_mask"
    assert OUTPUT_MODES == ("binary_mask", "uncompressed_rle", "coco_rle")


# --------------------------------------------------------------------------------------------
# Validation: every bad value raises ConfigError naming its parameter
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params, name", [
    ({"points_per_side": 0}, "points_per_side"),
    ({"points_per_side": -3}, "points_per_side"),
    ({"points_per_side": 2.5}, "points_per_side"),
    ({"points_per_side": True}, "points_per_side"),
    ({"points_per_batch": 0}, "points_per_batch"),
    ({"decoder_chunk_size": 0}, "decoder_chunk_size"),
    ({"input_size": 1000}, "input_size"),
    ({"input_size": 128}, "input_size"),
    ({"input_size": 1536.0}, "input_size"),
    ({"compute_dtype": "float16"}, "compute_dtype"),
    ({"compute_dtype": None}, "compute_dtype"),
    ({"crop_n_points_downscale_factor": 0}, "crop_n_points_downscale_factor"),
    ({"crop_n_layers": -1}, "crop_n_layers"),
    ({"crop_n_layers": 5}, r"crop_n_layers must be at most 4"),
    ({"refine_crop_n_layers": 5}, r"refine_crop_n_layers must be at most 4"),
    ({"points_per_side": 100000}, r"points_per_side must be an integer in \[1, 1024\]"),
    ({"points_per_side": 1025}, r"points_per_side must be an integer in \[1, 1024\]"),
    ({"points_per_batch": 1025}, r"points_per_batch must be at most 1024"),
    ({"decoder_chunk_size": 257}, r"decoder_chunk_size must be at most 256"),
    ({"min_mask_region_area": -1}, "min_mask_region_area"),
    ({"pred_iou_thresh": 1.5}, "pred_iou_thresh"),
    ({"pred_iou_thresh": -0.1}, "pred_iou_thresh"),
    ({"stability_score_thresh": 1.5}, "stability_score_thresh"),
    ({"box_nms_thresh": 1.5}, "box_nms_thresh"),
    ({"crop_nms_thresh": 1.5}, "crop_nms_thresh"),
    ({"pred_iou_thresh": "0.5"}, "pred_iou_thresh"),
    ({"stability_score_offset": -1.0}, "stability_score_offset"),
    ({"crop_overlap_ratio": 1.0}, "crop_overlap_ratio"),
    ({"output_mode": "png"}, "output_mode"),
    ({"hq_token_only": 1}, "hq_token_only"),
])
def test_bad_value_names_parameter(params, name):
    with pytest.raises(ConfigError, match=name):
        AMGConfig(**params)
    # ``replace`` validates too.
    with pytest.raises(ConfigError, match=name):
        AMGConfig().replace(**params)


def test_bad_output_mode_lists_modes():
    with pytest.raises(ConfigError) as ei:
        AMGConfig(output_mode="png")
    msg = str(ei.value)
    assert "'png'" in msg and all(m in msg for m in OUTPUT_MODES)


def test_thresholds_accept_bounds():
    cfg = AMGConfig(pred_iou_thresh=0.0, stability_score_thresh=1.0, box_nms_thresh=0,
                    crop_nms_thresh=1, crop_overlap_ratio=0.0, points_per_side=np.int64(4))
    assert cfg.pred_iou_thresh == 0.0 and cfg.points_per_side == 4


def test_both_points_per_side_and_point_grids_rejected():
    with pytest.raises(ConfigError, match="points_per_side and point_grids"):
        AMGConfig(points_per_side=8, point_grids=[np.full((4, 2), 0.5)])


def test_neither_points_per_side_nor_point_grids_rejected():
    with pytest.raises(ConfigError, match="points_per_side and point_grids"):
        AMGConfig(points_per_side=None)
    with pytest.raises(ConfigError, match="points_per_side and point_grids"):
        AMGConfig(points_per_side=None, point_grids=None)


def test_point_grids_accepted_and_replace_clears_points_per_side():
    grid = np.array([[0.25, 0.5], [0.75, 0.5]])
    cfg = AMGConfig(points_per_side=None, point_grids=[grid])
    assert cfg.points_per_side is None and len(cfg.point_grids) == 1
    cfg2 = AMGConfig().replace(point_grids=[grid, grid], crop_n_layers=1)
    assert cfg2.points_per_side is None and cfg2.crop_n_layers == 1


def test_point_grids_wrong_count_for_crop_layers():
    grid = np.full((3, 2), 0.5)
    with pytest.raises(ConfigError, match=r"point_grids has 1 grids.*crop_n_layers \+ 1 = 2"):
        AMGConfig(points_per_side=None, point_grids=[grid], crop_n_layers=1)
    with pytest.raises(ConfigError, match="point_grids has 2 grids"):
        AMGConfig(points_per_side=None, point_grids=[grid, grid], crop_n_layers=0)


@pytest.mark.parametrize("grid", [
    np.full((4, 3), 0.5),          # three columns
    np.full((4,), 0.5),            # 1-D
    np.full((2, 4, 2), 0.5),       # 3-D
    np.zeros((0, 2)),              # empty
], ids=["Nx3", "1d", "3d", "empty"])
def test_point_grid_wrong_shape(grid):
    with pytest.raises(ConfigError, match=r"point_grids\[0\] must have shape \(N, 2\)"):
        AMGConfig(points_per_side=None, point_grids=[grid])


def test_point_grid_second_layer_wrong_shape_is_indexed():
    with pytest.raises(ConfigError, match=r"point_grids\[1\]"):
        AMGConfig(points_per_side=None, crop_n_layers=1,
                  point_grids=[np.full((4, 2), 0.5), np.full((4, 1), 0.5)])


def test_point_grid_outside_unit_square():
    with pytest.raises(ConfigError, match=r"point_grids\[0\] must hold xy in \[0, 1\]"):
        AMGConfig(points_per_side=None, point_grids=[np.array([[0.5, 1.5]])])


# --------------------------------------------------------------------------------------------
# Unknown names
# --------------------------------------------------------------------------------------------


def test_replace_rejects_unknown_name():
    with pytest.raises(ConfigError) as ei:
        AMGConfig().replace(pointz_per_side=8, points_per_side=8)
    msg = str(ei.value)
    assert "pointz_per_side" in msg
    assert "points_per_side" in msg  # the known names are listed to spot the typo


def test_constructor_rejects_unknown_name():
    with pytest.raises(TypeError, match="pointz_per_side"):
        AMGConfig(pointz_per_side=8)


def test_mask_generator_rejects_unknown_name(mobile_sam):
    from amg.generator import MaskGenerator

    with pytest.raises(ConfigError, match="pointz_per_side"):
        MaskGenerator(mobile_sam, pointz_per_side=8)
    # A known name goes through and validates.
    gen = MaskGenerator(mobile_sam, points_per_side=8)
    assert gen.config.points_per_side == 8 and len(gen.point_grids[0]) == 64
    with pytest.raises(ConfigError, match="pred_iou_thresh"):
        MaskGenerator(mobile_sam, pred_iou_thresh=1.5)


# --------------------------------------------------------------------------------------------
# Parameter descriptions (the command-line flags are derived from them)
# --------------------------------------------------------------------------------------------


def test_every_parameter_has_type_default_and_one_line_description():
    params = parameters()
    assert [p.name for p in params] == list(PARAMETER_NAMES)
    cfg = AMGConfig()
    for p in params:
        assert p.help and "\n" not in p.help and len(p.help) <= 90, p.name
        assert p.default is getattr(cfg, p.name) or p.default == getattr(cfg, p.name), p.name
        if p.flag:
            assert p.type in (int, float, str, bool), p.name
            assert p.default_label(), p.name
    by_name = {p.name: p for p in params}
    # Optional fields take their scalar type; only grids and the record encoding have no flag.
    assert {n: by_name[n].type for n in ("points_per_side", "input_size", "max_masks",
                                         "reserve_pred_iou_thresh", "fill_holes",
                                         "compute_dtype")} == {
        "points_per_side": int, "input_size": int, "max_masks": int,
        "reserve_pred_iou_thresh": float, "fill_holes": bool, "compute_dtype": str}
    assert by_name["point_grids"].type is None
    assert {p.name for p in params if not p.flag} == {"point_grids", "output_mode"}
    assert by_name["compute_dtype"].choices == COMPUTE_DTYPES
    assert by_name["output_mode"].choices == OUTPUT_MODES
    assert by_name["crop_overlap_ratio"].default_label() == "0.341333"
    assert by_name["fill_holes"].default_label() == "false"
    assert by_name["max_masks"].default_label() == "no limit"
    assert {n: by_name[n].type for n in ("mask_threshold", "multimask_output", "use_m2m")} == {
        "mask_threshold": float, "multimask_output": bool, "use_m2m": bool}
    assert by_name["pred_iou_thresh"].default_label() == "the model family's: 0.88, SAM 2 0.8"


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


def test_default_preset_equals_dataclass_defaults():
    cfg = AMGConfig.from_preset("default")
    ref = AMGConfig()
    for name in PARAMETER_NAMES:
        a, b = getattr(cfg, name), getattr(ref, name)
        if isinstance(b, float):
            assert math.isclose(a, b, rel_tol=0, abs_tol=1e-12), name
        else:
            assert a == b, name


def test_crops_preset_documented_values():
    cfg = AMGConfig.from_preset("crops")
    assert cfg.crop_n_layers == 1
    assert cfg.crop_n_points_downscale_factor == 2
    assert cfg.min_mask_region_area == 100
    assert cfg.points_per_side == 32
    # The rest stays at the defaults (the model family's predicted-IoU threshold).
    assert cfg.pred_iou_thresh is None and cfg.box_nms_thresh == 0.7
    assert cfg.output_mode == "binary_mask"


# Each preset's documented differences from the reference defaults (configs/*.yaml comments,
# README's preset table); every other parameter must equal the default.
PRESET_DIFFERENCES = {
    "fast": {"compute_dtype": "auto"},
    "fastest": {"compute_dtype": "auto", "points_per_side": 24, "pred_iou_thresh": 0.86,
                "stability_score_thresh": 0.92},
    "quality": {"pred_iou_thresh": 0.8, "stability_score_thresh": 0.9, "max_masks": 100,
                "nested_mask_penalty": 0.03, "duplicate_mask_iou": 0.7,
                "reserve_pred_iou_thresh": 0.5,
                "reserve_stability_score_thresh": 0.7, "refine_crop_n_layers": 2,
                "fill_holes": True, "island_area_frac": 0.1},
    "recall": {"points_per_side": 64, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.6,
               "box_nms_thresh": 0.9, "max_masks": 1000},
    # the official SAM 2 notebook's settings
    "sam2": {"points_per_side": 64, "points_per_batch": 128, "pred_iou_thresh": 0.7,
             "stability_score_thresh": 0.92, "stability_score_offset": 0.7,
             "crop_n_layers": 1, "box_nms_thresh": 0.7, "crop_n_points_downscale_factor": 2,
             "min_mask_region_area": 25, "use_m2m": True},
}


@pytest.mark.parametrize("preset", sorted(PRESET_DIFFERENCES))
def test_preset_differs_from_the_defaults_only_as_documented(preset):
    cfg, ref, documented = AMGConfig.from_preset(preset), AMGConfig(), PRESET_DIFFERENCES[preset]
    for name in PARAMETER_NAMES:
        value = getattr(cfg, name)
        if name in documented:
            assert value == documented[name] and type(value) is type(documented[name]), name
        else:
            assert value == getattr(ref, name), name


def test_preset_overrides_applied_and_validated():
    cfg = AMGConfig.from_preset("crops", points_per_side=4, crop_n_layers=0)
    assert cfg.points_per_side == 4 and cfg.crop_n_layers == 0
    assert cfg.min_mask_region_area == 100
    with pytest.raises(ConfigError, match="pointz_per_side"):
        AMGConfig.from_preset("crops", pointz_per_side=4)
    with pytest.raises(ConfigError, match="box_nms_thresh"):
        AMGConfig.from_preset("default", box_nms_thresh=2.0)


def test_named_presets_resolve_to_repo_configs():
    assert preset_path("default").resolve() == (REPO / "configs" / "default.yaml").resolve()
    assert preset_path("crops").resolve() == (REPO / "configs" / "crops.yaml").resolve()


def test_yaml_path_preset(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("points_per_side: 12\npred_iou_thresh: 0.5\noutput_mode: coco_rle\n")
    for arg in (p, str(p)):
        cfg = AMGConfig.from_preset(str(arg))
        assert cfg.points_per_side == 12 and cfg.pred_iou_thresh == 0.5
        assert cfg.output_mode == "coco_rle"
        assert cfg.stability_score_thresh == 0.95  # unspecified -> default
    assert AMGConfig.from_yaml(p, points_per_side=3).points_per_side == 3


def test_yaml_with_point_grids(tmp_path):
    p = tmp_path / "grid.yaml"
    p.write_text("point_grids:\n  - [[0.5, 0.5], [0.25, 0.75]]\n")
    cfg = AMGConfig.from_preset(str(p))
    assert cfg.points_per_side is None
    np.testing.assert_allclose(np.asarray(cfg.point_grids[0]), [[0.5, 0.5], [0.25, 0.75]])


def test_empty_yaml_gives_defaults(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    assert AMGConfig.from_preset(str(p)) == AMGConfig()


def test_yaml_unknown_key_named(tmp_path):
    p = tmp_path / "typo.yaml"
    p.write_text("points_per_side: 8\npred_iou_treshold: 0.5\n")
    with pytest.raises(ConfigError) as ei:
        AMGConfig.from_preset(str(p))
    msg = str(ei.value)
    assert "pred_iou_treshold" in msg and "typo.yaml" in msg


def test_yaml_bad_value_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("crop_n_layers: -2\n")
    with pytest.raises(ConfigError, match="crop_n_layers"):
        AMGConfig.from_preset(str(p))


def test_yaml_not_a_mapping(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        AMGConfig.from_preset(str(p))


def test_yaml_syntax_error_names_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("points_per_side: [8\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        AMGConfig.from_preset(str(p))


def test_missing_yaml_path(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        AMGConfig.from_preset(str(tmp_path / "nope.yaml"))


def test_unknown_preset_lists_known_presets():
    with pytest.raises(ConfigError) as ei:
        AMGConfig.from_preset("fastestest")
    msg = str(ei.value)
    assert "'fastestest'" in msg
    assert all(name in msg for name in ("default", "crops", "fast", "fastest", "quality", "recall"))
