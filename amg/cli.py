"""The ``segment-everything`` command: segment images and folders into mask-record files.

    segment-everything INPUT... --output DIR [--model mobile_sam] [--config default]
                       [--points-per-side 16 ...] [--device cpu]

For each image, ``DIR/<image stem>.json`` holds the list of mask records (reference keys) with
COCO RLE ``segmentation`` (``counts`` as str, decodable by pycocotools). An unreadable image is
reported with its path and reason and skipped; the exit code is 0 only if every image succeeded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from .config import AMGConfig, ConfigError
from .io import ImageReadError, find_images, load_image, output_stems, write_atomic

# AMG parameters exposed as flags, with their types (point_grids and output_mode are not:
# grids come from presets, and the JSON output is always COCO RLE).
FLAG_TYPES = {
    "points_per_side": int, "points_per_batch": int, "pred_iou_thresh": float,
    "stability_score_thresh": float, "stability_score_offset": float, "box_nms_thresh": float,
    "crop_n_layers": int, "crop_nms_thresh": float, "crop_overlap_ratio": float,
    "crop_n_points_downscale_factor": int, "min_mask_region_area": int,
    "decoder_chunk_size": int,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one flag per AMG parameter, named like ``--points-per-side``)."""
    p = argparse.ArgumentParser(
        prog="segment-everything",
        description="Automatic everything-masks with Segment Anything (MobileSAM by default).")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (searched recursively)")
    p.add_argument("--output", "-o", required=True, type=Path, help="output folder")
    p.add_argument("--model", default="mobile_sam",
                   help="mobile_sam | vit_b | vit_l | vit_h, or a checkpoint file (default: mobile_sam)")
    p.add_argument("--config", default="default", help="preset name (default, crops, ...) or YAML file")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    amg = p.add_argument_group("generation parameters (override the preset)")
    for name, typ in FLAG_TYPES.items():
        amg.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None,
                         metavar=typ.__name__.upper())
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (0 all images done, 1 some failed, 2 usage)."""
    args = build_parser().parse_args(argv)
    overrides = {k: getattr(args, k) for k in FLAG_TYPES if getattr(args, k) is not None}
    try:
        config = AMGConfig.from_preset(args.config, **overrides).replace(output_mode="coco_rle")
        images = find_images(args.inputs)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"segment-everything: error: {exc}", file=sys.stderr)
        return 2
    if not images:
        print("segment-everything: error: no images found in the inputs", file=sys.stderr)
        return 2

    from sam_model import CheckpointError, load_model  # heavy imports after argument checks

    from .generator import MaskGenerator

    try:
        model = load_model(args.model, device=args.device)
    except (CheckpointError, KeyError) as exc:
        print(f"segment-everything: error: {exc}", file=sys.stderr)
        return 2
    generator = MaskGenerator(model, config)
    failures: list[tuple[Path, str]] = []
    n_masks, t0 = 0, time.perf_counter()
    bar = tqdm(list(zip(images, output_stems(images))), unit="img", desc="segmenting")
    for path, stem in bar:
        try:
            image, note = load_image(path)
            if note:
                tqdm.write(f"{path}: {note}")
            records = generator.generate(image)
        except (ImageReadError, ValueError) as exc:
            failures.append((path, str(exc)))
            tqdm.write(f"error: {exc}", file=sys.stderr)
            continue
        write_atomic(args.output / f"{stem}.json", json.dumps(records))
        n_masks += len(records)
        bar.set_postfix(masks=n_masks)
    bar.close()
    elapsed = time.perf_counter() - t0
    done = len(images) - len(failures)
    print(f"segment-everything: {done}/{len(images)} images, {n_masks} masks, {elapsed:.1f} s "
          f"-> {args.output}")
    if failures:
        print(f"segment-everything: {len(failures)} image(s) failed:", file=sys.stderr)
        for path, reason in failures:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
