"""Runs over many images: the ``segment-everything`` command and everything behind it.

=====================  ============================================================================
module                 job
=====================  ============================================================================
``cli``                the ``segment-everything`` command: flags, exit codes
``inputs``             the run's image list from files, folders, globs and list files
``names``              per-image output names and COCO ``file_name`` values
``options``            :class:`~amg.dataset.options.RunOptions`: every setting of a run, validated
``jobs``               :class:`~amg.dataset.jobs.ImageJob`: one image of a run, and the job list
``state``              run state and resume: stored parameters, done markers, the run lock
``preflight``          checks before a run writes anything: output folder, device, weights
``processing``         one decoded image to its outputs and done marker (both engines)
``progress``           progress bar, error list (``errors.csv``), counts
``run``                :func:`~amg.dataset.run.run_dataset`: prepare, process, finish
``local_engine``       images decoded ahead on threads, the model on the main thread
``ray_engine``         the same run with the model replicated over a Ray cluster
``threads``            torch's intra-op thread count for a block
``outputs``            output writers: JSON records, COCO, PNG masks, label maps, overlays; layout
``label_studio``       Label Studio tasks (brush RLE or polygons) and the labelling config
``yolo``               YOLO segmentation label files and ``data.yaml``
``coco_images``        image ids and file names taken from an existing COCO file
``polygons``           binary masks as COCO polygons, holes bridged
``record_filters``     filters on finished records: area bounds, mask-IoU NMS
=====================  ============================================================================

This package sits above :mod:`amg` (the generator and its pure steps), which never imports it.
"""
