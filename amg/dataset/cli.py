"""The ``segment-everything`` command: segment images, folders and image lists into datasets.

    segment-everything models
    segment-everything INPUT... --output DIR [--format json,coco,png,labelmap,overlay]
                       [--list FILE] [--glob PATTERN] [--model mobile_sam] [--config default]
                       [--points-per-side 16 ...] [--min-area N] [--mask-nms-thresh 0.8]
                       [--engine local|ray] [--overwrite] [--device cpu]

Inputs are collected by :func:`amg.dataset.inputs.collect_images`, the run is
:func:`amg.dataset.run.run_dataset` (outputs: :mod:`amg.dataset.outputs`; resumable; bad images
recorded in ``DIR/errors.csv``). Exit code: 0 every image done, 1 some image failed, 2 bad
arguments or a run that cannot start, 130 interrupted (Ctrl-C; run again to resume).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..config import AMGConfig, ConfigError, Parameter, parameters
from .inputs import collect_images
from .outputs import FORMATS, SEGMENTATIONS

# The generation parameters exposed as flags, derived from AMGConfig's fields (point_grids and
# output_mode are not: grids come from presets, and the outputs are made from COCO RLE records).
GENERATION_FLAGS = tuple(p for p in parameters() if p.flag)


def _formats(text: str) -> list[str]:
    """``--format`` value: one format or a comma-separated list."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown format {text!r}; choose from {', '.join(FORMATS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one flag per AMG parameter, named like ``--points-per-side``)."""
    p = argparse.ArgumentParser(
        prog="segment-everything",
        description="Automatic everything-masks with Segment Anything (MobileSAM by default), "
                    "from one photo to a whole dataset. Runs are resumable: run the same command "
                    "again after an interruption.")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image files, folders (searched recursively), or @LIST.txt files of paths")
    p.add_argument("--output", "-o", required=True, type=Path, help="output folder")
    p.add_argument("--list", dest="list_files", action="append", default=[], metavar="FILE",
                   help="text file with one image or folder path per line (relative to the file); "
                        "repeatable")
    p.add_argument("--glob", dest="pattern", default=None, metavar="PATTERN",
                   help="files to take from folders, e.g. '**/*.png' (default: image extensions, "
                        "recursive)")
    p.add_argument("--model", default="mobile_sam",
                   help="mobile_sam | vit_b | vit_l | vit_h, or a checkpoint file (default: mobile_sam)")
    p.add_argument("--config", default="default", help="preset name (default, crops, ...) or YAML file")
    p.add_argument("--device", default=None,
                   help="torch device, e.g. cpu or cuda (default: cpu; with --engine ray: cuda "
                        "when the cluster has GPUs)")

    out = p.add_argument_group("outputs")
    out.add_argument("--format", dest="formats", type=_formats, action="extend", default=None,
                     metavar="FORMAT",
                     help=f"{', '.join(FORMATS)}; several allowed, comma-separated or repeated "
                          "(default: json)")
    out.add_argument("--segmentation", choices=SEGMENTATIONS, default="rle",
                     help="COCO segmentation: rle (default) or polygon (holes bridged)")
    out.add_argument("--category", default="object", help="COCO category name (default: object)")
    out.add_argument("--image-root", type=Path, default=None, metavar="DIR",
                     help="folder the COCO file_name is relative to (default: the deepest folder "
                          "holding every image)")
    out.add_argument("--min-area", type=int, default=None, metavar="PIXELS",
                     help="drop masks smaller than this many pixels")
    out.add_argument("--max-area", type=int, default=None, metavar="PIXELS",
                     help="drop masks larger than this many pixels")
    out.add_argument("--mask-nms-thresh", type=float, default=None, metavar="IOU",
                     help="drop a mask whose mask IoU with a higher predicted-IoU mask is above "
                          "this (off by default)")

    run = p.add_argument_group("run")
    run.add_argument("--overwrite", action="store_true",
                     help="redo every image, forgetting an earlier run in DIR")
    run.add_argument("--workers", type=int, default=2, metavar="N",
                     help="threads decoding images ahead and writing outputs (default: 2)")
    run.add_argument("--threads", type=int, default=None, metavar="N",
                     help="torch threads for the model (default: torch's choice)")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bar")
    run.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local (default) or ray (Ray Data over a Ray cluster)")
    run.add_argument("--ray-address", default=None, metavar="ADDRESS",
                     help="existing Ray cluster, e.g. ray://head:10001 or auto (default: "
                          "$RAY_ADDRESS, else a local cluster)")
    run.add_argument("--ray-actors", type=int, default=None, metavar="N",
                     help="model replicas under Ray (default: one per GPU, or CPUs - 1)")

    gen = p.add_argument_group(
        "generation parameters",
        "override the preset's values; the defaults shown are AMGConfig's, which the default "
        "preset keeps")
    for param in GENERATION_FLAGS:
        _add_generation_flag(gen, param)
    return p


def _add_generation_flag(group: Any, param: Parameter) -> None:
    """Add ``--name-with-dashes`` for an :class:`AMGConfig` field to ``group`` (an argparse
    parser or argument group): its type (booleans as
    ``--x/--no-x``), choices, one-line help and default; unset flags stay ``None`` (the preset
    decides)."""
    flag = "--" + param.name.replace("_", "-")
    help = f"{param.help} (default: {param.default_label()})".replace("%", "%%")
    if param.type is bool:
        group.add_argument(flag, dest=param.name, action=argparse.BooleanOptionalAction,
                           default=None, help=help)
    elif param.choices is not None:
        group.add_argument(flag, dest=param.name, type=param.type, choices=param.choices,
                           default=None, help=help)
    else:
        group.add_argument(flag, dest=param.name, type=param.type, default=None,
                           metavar=param.type.__name__.upper(), help=help)


def _error(msg: object) -> int:
    print(f"segment-everything: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (0 all images done, 1 some failed, 2 usage,
    130 interrupted). ``segment-everything models`` lists the models instead
    (:mod:`amg.dataset.models_command`; an input file named ``models`` is ``./models``)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["models"]:
        from .models_command import main as models_main
        return models_main(argv[1:])
    args = build_parser().parse_args(argv)
    overrides = {p.name: getattr(args, p.name) for p in GENERATION_FLAGS
                 if getattr(args, p.name) is not None}
    from .options import RunOptions
    from .run import run_dataset
    from .state import RunLocked, RunMismatch

    try:
        config = AMGConfig.from_preset(args.config, **overrides)
        options = RunOptions(
            output=args.output, config=config, model=args.model, device=args.device,
            formats=tuple(args.formats or ("json",)), segmentation=args.segmentation,
            category=args.category, image_root=args.image_root, min_area=args.min_area,
            max_area=args.max_area, mask_nms_thresh=args.mask_nms_thresh,
            overwrite=args.overwrite, workers=args.workers, threads=args.threads,
            engine=args.engine, ray_address=args.ray_address, ray_actors=args.ray_actors,
            progress=args.progress)
        if not args.inputs and not args.list_files:
            return _error("no INPUT given (image files, folders, @list files or --list FILE)")
        images = collect_images(args.inputs, args.list_files, args.pattern)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        return _error(exc)
    if not images:
        return _error("no images found in the inputs")

    from sam_model import CheckpointError, model_names  # heavy import after argument checks

    if args.model not in model_names() and not Path(args.model).is_file():
        return _error(f"--model {args.model}: neither a known model ({', '.join(model_names())}; "
                      "see segment-everything models) nor a checkpoint file")
    try:
        summary = run_dataset(images, options)
    except (RunMismatch, RunLocked, CheckpointError, KeyError, ValueError, ImportError) as exc:
        return _error(exc)
    except KeyboardInterrupt:
        print(f"segment-everything: interrupted; run the same command again to resume in "
              f"{args.output}", file=sys.stderr)
        return 130

    extra = f" ({summary.resumed} done by an earlier run)" if summary.resumed else ""
    print(f"segment-everything: {summary.done}/{summary.total} images{extra}, {summary.masks} masks, "
          f"{summary.seconds:.1f} s ({summary.images_per_second:.2f} images/s) -> {args.output}")
    if summary.failed:
        print(f"segment-everything: {len(summary.failed)} image(s) failed "
              f"(listed in {options.output / 'errors.csv'}):", file=sys.stderr)
        for path, reason in summary.failed:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
