"""Hand-made ground truth and proposals for the evaluation tests: boxes on a blank 200 x 200
image, so every IoU is known, the coco_tiny annotations, and a stand-in generator that returns
an image's ground-truth masks."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from amg.evaluation.ground_truth import class_agnostic_coco
from amg.evaluation.proposals import records_to_proposals
from amg.evaluation.recall import RECALL_MAX_DETS, evaluate_proposals, recall_summary

from ..conftest import shared_path

H = W = 200  # hand-made image size, pixels


def box(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    """(h, w) bool mask of rows y0:y1, columns x0:x1."""
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def rle(m: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def gt(objects, crowd=(), images=(1,)):
    """Class-agnostic GT: ``objects``/``crowd`` are (image_id, mask); mixed category ids."""
    anns = []
    for i, (img, m) in enumerate([*objects, *crowd]):
        anns.append({"id": i + 1, "image_id": img, "category_id": 7 + i, "segmentation": rle(m),
                     "area": float(m.sum()), "bbox": [0, 0, 1, 1], "iscrowd": int(i >= len(objects))})
    data = {"images": [{"id": i, "height": H, "width": W, "file_name": f"{i}.jpg"} for i in images],
            "annotations": anns, "categories": [{"id": 7 + i, "name": str(i)} for i in range(len(anns))]}
    return class_agnostic_coco(data)


def record(m, predicted_iou=0.9, stability_score=0.9):
    return {"segmentation": m, "predicted_iou": predicted_iou, "stability_score": stability_score}


def junk(n):
    """n masks overlapping nothing of the objects below (inside rows 190:200)."""
    return [box(190, 200, 2 * i, 2 * i + 2) for i in range(n)]


SMALL = box(0, 10, 0, 10)          # 100 px  < 32²
MEDIUM = box(20, 60, 20, 60)       # 1600 px
LARGE = box(80, 180, 80, 180)      # 10000 px >= 96²


def ar(coco, records, image_ids=(1,), max_dets=RECALL_MAX_DETS):
    props = []
    for img in image_ids:
        props += records_to_proposals([r for r in records if r.get("image", 1) == img], img, H, W)
    return recall_summary(evaluate_proposals(coco, props, list(image_ids), max_dets))


def coco_tiny_annotations():
    return shared_path("coco_tiny", "annotations", "instances_val2017.json")


class GroundTruthGenerator:
    """Returns the non-crowd ground-truth masks of the dataset image it is given (found by
    its pixels)."""

    def __init__(self, dataset):
        from amg.io import load_image
        self.dataset, self.calls = dataset, 0
        self.ids = {load_image(dataset.image_path(i))[0].tobytes(): i for i in dataset.image_ids}

    def generate(self, image):
        self.calls += 1
        coco = self.dataset.coco
        img = self.ids[image.tobytes()]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img], iscrowd=False))
        return [record(coco.annToMask(a).astype(bool), 0.9, 0.95) for a in anns]

