"""The report: several proposal sources evaluated on the same images (:func:`evaluate_sources`),
one row each, and its Markdown table (:func:`format_markdown`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from .cache import ImageResult, generate_proposals
from .ground_truth import Dataset
from .proposals import records_to_proposals
from .recall import RECALL_MAX_DETS, evaluate_proposals, recall_summary
from .sources import ProposalSource

__all__ = ["evaluate_results", "evaluate_sources", "format_value", "format_markdown"]


def evaluate_results(dataset: Dataset, results: Sequence[ImageResult]) -> dict[str, Any]:
    """Metric and cost numbers of one source's results on the dataset.

    Returns:
        :func:`recall_summary`'s keys plus ``images``, ``masks_per_image`` (mean number of
        masks, not capped), ``seconds_per_image`` (mean generation seconds, cached ones
        included as measured then), ``per_image`` ([{image_id, masks, seconds, cached}]).
    """
    proposals = []
    for res in results:
        info = dataset.image_info(res.image_id)
        proposals += records_to_proposals(res.masks, res.image_id, int(info["height"]), int(info["width"]))
    ev = evaluate_proposals(dataset.coco, proposals, [r.image_id for r in results])
    n = max(len(results), 1)
    return {
        "images": len(results),
        "masks_per_image": sum(len(r.masks) for r in results) / n,
        "seconds_per_image": sum(r.seconds for r in results) / n,
        **recall_summary(ev),
        "per_image": [{"image_id": r.image_id, "masks": len(r.masks), "seconds": round(r.seconds, 3),
                       "cached": r.cached} for r in results],
    }


def evaluate_sources(sources: Sequence[ProposalSource], dataset: Dataset,
                     cache: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate several sources on the same images.

    Returns:
        ``{"dataset": Dataset.summary(), "metric": {...}, "rows": [...]}``; each row has
        ``name``, ``key`` (the source key), ``key_hash`` and :func:`evaluate_results`' keys.
        Rows are computed one after another; each is generated (or read from cache) fully
        before it is evaluated.
    """
    rows = []
    for src in sources:
        results = generate_proposals(src, dataset, cache=cache, progress=progress)
        rows.append({"name": src.name, "key_hash": src.key_hash, "key": src.key,
                     **evaluate_results(dataset, results)})
    return {
        "dataset": dataset.summary(),
        "metric": {"score": "mean(predicted_iou, stability_score)", "iou_type": "segm",
                   "use_cats": 0, "iou_thresholds": "0.50:0.05:0.95", "crowd": "ignored",
                   "max_dets": list(RECALL_MAX_DETS)},
        "rows": rows,
    }


def format_value(v: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` decimals (NaN as "–"), anything else as ``str``."""
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def format_markdown(report: dict[str, Any]) -> str:
    """A Markdown table of a report (:func:`evaluate_sources`): one line per row with AR@10,
    AR@100, AR@1000, AR@1000 for small/medium/large objects, masks/image and s/image."""
    ds = report["dataset"]
    ids = ds["image_ids"]
    shown = ", ".join(map(str, ids[:12])) + (", …" if len(ids) > 12 else "")
    lines = [
        f"Images: {ds['images']} ({shown}); instances: {ds['instances']} "
        f"(small {ds['instances_by_size']['small']}, medium {ds['instances_by_size']['medium']}, "
        f"large {ds['instances_by_size']['large']}), crowd ignored: {ds['crowd']}.",
        "",
        "| row | AR@10 | AR@100 | AR@1000 | AR small | AR medium | AR large | masks/img | s/img |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append("| " + " | ".join([
            r["name"], format_value(r.get("AR@10")), format_value(r.get("AR@100")), format_value(r.get("AR@1000")),
            format_value(r.get("AR_small@1000")), format_value(r.get("AR_medium@1000")), format_value(r.get("AR_large@1000")),
            format_value(r["masks_per_image"], 1), format_value(r["seconds_per_image"], 1)]) + " |")
    lines.append("")
    lines.append("AR: recall averaged over mask IoU 0.50:0.05:0.95 (class-agnostic, pycocotools "
                 "segm); small/medium/large at 1000 proposals. s/img: generation only.")
    return "\n".join(lines) + "\n"
