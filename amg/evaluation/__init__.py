"""Quality evaluation of automatic masks as class-agnostic object proposals.

The metric is the SAM paper's object-proposal recall (§7.3, Appendix D.3): every generated mask
is a proposal scored by ``mean(predicted_iou, stability_score)``; ground truth is made
class-agnostic (every annotation in one category, every proposal in category 1); pycocotools
``COCOeval(gt, dt, "segm")`` runs with ``params.useCats = 0``; crowd annotations are ignored
regions, exactly as pycocotools treats ``iscrowd``. Reported: average recall (AR, the mean of the
recall over the IoU thresholds 0.50:0.05:0.95) with at most 10, 100 and 1000 proposals per
image, and AR@1000 for small (< 32² px), medium and large ground-truth objects.

=================  ================================================================================
module             job
=================  ================================================================================
``errors``         :class:`~amg.evaluation.errors.EvaluationError`
``ground_truth``   the class-agnostic ground truth and the evaluated images (``load_dataset``)
``proposals``      mask records (ours or the reference's) to scored COCO results
``recall``         the pycocotools evaluation and AR read from it (``evaluate_proposals``)
``sources``        a named generator with a stable identity (``ProposalSource``, ``our_source``)
``cache``          a source run over the images, cached per image (``generate_proposals``)
``report``         several sources on the same images, the Markdown table (``evaluate_sources``)
``plots``          the report's two PNG plots (``write_plots``)
=================  ================================================================================

The product never imports the reference implementations; ``tools/evaluate.py`` plugs the
reference generator in as a :class:`~amg.evaluation.sources.ProposalSource`. This package sits
above :mod:`amg`, which never imports it.
"""
