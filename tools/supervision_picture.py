#!/usr/bin/env python3
"""The README's supervision picture: our records through ``sv.Detections.from_sam`` and
``sv.MaskAnnotator`` on a photo (supervision is in the test extra: ``pip install -e ".[test]"``).

    python3 tools/supervision_picture.py ../shared/images/dog.jpg docs/img/supervision_dog.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import supervision as sv  # noqa: E402

from amg import MaskGenerator  # noqa: E402
from amg.io import load_image  # noqa: E402
from sam_model import load_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("image", type=Path)
    p.add_argument("output", type=Path, help="picture to write (.jpg or .png)")
    p.add_argument("--model", default="mobile_sam")
    args = p.parse_args()

    image, _ = load_image(args.image)  # (H, W, 3) uint8 RGB
    records = MaskGenerator(load_model(args.model), output_mode="coco_rle").generate(image)
    detections = sv.Detections.from_sam(records)
    annotated = sv.MaskAnnotator(color_lookup=sv.ColorLookup.INDEX).annotate(
        scene=cv2.cvtColor(image, cv2.COLOR_RGB2BGR), detections=detections)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.output), annotated, [cv2.IMWRITE_JPEG_QUALITY, 85]):
        raise SystemExit(f"cannot write {args.output}")
    print(f"{len(records)} masks -> {args.output}")


if __name__ == "__main__":
    main()
