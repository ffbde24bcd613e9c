"""Mask records as class-agnostic proposals: COCO results scored by
``mean(predicted_iou, stability_score)`` (SAM paper D.3), and the compact form the cache keeps.

Records may come from our generator or the reference's, in any output mode
(:func:`amg.rle.to_coco_rle` turns every segmentation into a COCO RLE with ``str`` counts).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from ..rle import to_coco_rle
from .errors import EvaluationError
from .ground_truth import OBJECT_CATEGORY

__all__ = ["proposal_score", "records_to_proposals", "compact_records"]


def proposal_score(record: dict[str, Any]) -> float:
    """A mask's proposal score: ``(predicted_iou + stability_score) / 2`` (SAM paper D.3).

    Raises:
        EvaluationError: a key is missing.
    """
    try:
        return 0.5 * (float(record["predicted_iou"]) + float(record["stability_score"]))
    except KeyError as exc:
        raise EvaluationError(f"mask record lacks {exc.args[0]!r} (needed for the proposal score)") from exc


def _per_record(records: Iterable[dict[str, Any]], image_id: int,
                convert: Callable[[dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
    """``convert`` applied to each record, in order; a missing key or a bad mask raises
    :class:`EvaluationError` naming the image and the mask's position."""
    out = []
    for i, r in enumerate(records):
        try:
            out.append(convert(r))
        except KeyError as exc:
            raise EvaluationError(f"image {image_id}, mask #{i}: record lacks {exc.args[0]!r}") from exc
        except ValueError as exc:  # EvaluationError, and amg.rle's format and size errors
            raise EvaluationError(f"image {image_id}, mask #{i}: {exc}") from exc
    return out


def records_to_proposals(records: Iterable[dict[str, Any]], image_id: int, height: int,
                         width: int) -> list[dict[str, Any]]:
    """Mask records (``MaskGenerator.generate`` or the reference's) to COCO result dicts.

    Args:
        records: dicts with ``segmentation`` (any output mode, see :func:`amg.rle.to_coco_rle`),
            ``predicted_iou`` and ``stability_score``.
        image_id: the COCO image id.
        height, width: image size in pixels.

    Returns:
        one dict per record: ``image_id``, ``category_id`` 1, ``segmentation`` (COCO RLE,
        str counts), ``score`` = :func:`proposal_score`; order kept.

    Raises:
        EvaluationError: a record lacks a key or has a mask of another size (names the image).
    """
    return _per_record(records, image_id, lambda r: {
        "image_id": int(image_id), "category_id": OBJECT_CATEGORY["id"],
        "segmentation": to_coco_rle(r["segmentation"], height, width),
        "score": proposal_score(r)})


def compact_records(records: Iterable[dict[str, Any]], image_id: int, height: int,
                    width: int) -> list[dict[str, Any]]:
    """What the cache keeps of each record: COCO RLE (str counts) and the two scores.

    Returns:
        one ``{"segmentation", "predicted_iou", "stability_score"}`` per record, order kept.

    Raises:
        EvaluationError: as :func:`records_to_proposals`.
    """
    return _per_record(records, image_id, lambda r: {
        "segmentation": to_coco_rle(r["segmentation"], height, width),
        "predicted_iou": float(r["predicted_iou"]),
        "stability_score": float(r["stability_score"])})
