"""Runs in the Datumaro venv: import COCO datasets with Datumaro (CVAT's dataset engine) and
dump what it read.

    python datumaro_dump.py OUT.json DATASET_DIR...

Each DATASET_DIR is imported with ``Dataset.import_from(DATASET_DIR, "coco_instances")``.
OUT.json: one entry per folder, ``{"categories": [names], "items": [{"id", "subset",
"image_path", "size", "attributes", "annotations": [{"type", "id", "group", "label",
"attributes", "rle" (masks: COCO RLE of Datumaro's mask image, counts str) | "points"
(polygons, flat xy)}]}]}``, items sorted by (subset, id).
"""

import json
import sys

import numpy as np
from datumaro.components.annotation import AnnotationType
from datumaro.components.dataset import Dataset
from pycocotools import mask as mask_utils


def dump(path: str) -> dict:
    ds = Dataset.import_from(path, "coco_instances")
    labels = ds.categories()[AnnotationType.label]
    items = []
    for item in sorted(ds, key=lambda it: (it.subset, it.id)):
        anns = []
        for a in item.annotations:
            entry = {"type": type(a).__name__, "id": a.id, "group": a.group,
                     "label": labels[a.label].name if a.label is not None else None,
                     "attributes": a.attributes}
            if a.type == AnnotationType.mask:
                rle = mask_utils.encode(np.asfortranarray(a.image.astype(np.uint8)))
                entry["rle"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}
            elif a.type == AnnotationType.polygon:
                entry["points"] = [float(v) for v in a.points]
            anns.append(entry)
        items.append({"id": item.id, "subset": item.subset,
                      "image_path": item.media.path if item.media is not None else None,
                      "size": list(item.media.size) if item.media is not None and item.media.size else None,
                      "attributes": item.attributes, "annotations": anns})
    return {"categories": [c.name for c in labels], "items": items}


def main() -> None:
    out, *paths = sys.argv[1:]
    with open(out, "w") as f:
        json.dump([dump(p) for p in paths], f)


if __name__ == "__main__":
    main()
