"""The ``segment-everything`` command: segment images, folders and image lists into datasets.

    segment-everything INPUT... --output DIR
                       [--format json,coco,label-studio,yolo,png,labelmap,overlay]
                       [--list FILE] [--glob PATTERN] [--model mobile_sam] [--config default]
                       [--points-per-side 16 ...] [--min-area N] [--mask-nms-thresh 0.8]
                       [--engine local|ray] [--overwrite] [--device cpu]

Inputs are collected by :func:`amg.dataset.inputs.collect_images`, the run is
:func:`amg.dataset.run.run_dataset` (outputs: :mod:`amg.dataset.outputs`; resumable; bad images
recorded in ``DIR/errors.csv``). Every failure ends with one line on stderr,
``segment-everything: error: ...``, naming the file or the flag (no traceback; set
``SEGMENT_EVERYTHING_DEBUG=1`` to see one for an unexpected error). Exit codes
(:data:`EXIT_CODES`): 0 every image done; 1 some image failed (listed in ``DIR/errors.csv``) or
the run stopped because its outputs could not be written (disk full: the finished images are
kept, run again to resume); 2 a usage error or a run that cannot start (nothing written); 130
interrupted (Ctrl-C; run again to resume).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, NoReturn

from .threads import prefer_passive_openmp

# Before anything loads torch (the output writers do): OpenMP reads its wait policy once, and a
# spinning OpenMP thread burns the core that other work on the machine needs.
prefer_passive_openmp()

from ..config import AMGConfig, ConfigError, Parameter, parameters, preset_summaries  # noqa: E402
from ..io import DEFAULT_MAX_PIXELS  # noqa: E402
from .inputs import collect_images  # noqa: E402
from .outputs import FORMATS, SEGMENTATIONS  # noqa: E402

EXIT_CODES = {
    0: "every image done",
    1: "some image failed (listed in DIR/errors.csv), or the run stopped because its outputs "
       "could not be written (disk full: finished images are kept; run again to resume)",
    2: "usage error, or a run that cannot start (nothing written)",
    130: "interrupted (run the same command again to resume)",
}

EXAMPLES = """\
examples:
  one photo (writes out/dog.json, its mask records):
    segment-everything examples/dog.jpg --output out
  a folder of photos to a COCO dataset with polygon segmentations:
    segment-everything photos/ --output dataset --format coco --segmentation polygon
  a resumable run with the quality preset (after an interruption, run it again to resume):
    segment-everything photos/ --output labels --config quality --format coco,png

exit codes:
""" + "\n".join(textwrap.fill(text, 92, initial_indent=f"  {code:<4}", subsequent_indent=" " * 6)
                for code, text in EXIT_CODES.items())

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


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help formatter that keeps the line breaks of a flag's help (each line wrapped)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        lines = []
        for part in text.splitlines():
            lines.extend(super()._split_lines(part, width))
        return lines


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (not the whole usage text)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def version() -> str:
    """The installed package's version, else the source tree's ``pyproject.toml`` version."""
    from importlib import metadata

    try:
        return metadata.version("segment-everything")
    except metadata.PackageNotFoundError:
        pass
    try:
        import tomllib
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["version"] + " (not installed)"
    except (OSError, KeyError, ValueError):
        return "unknown"


def _preset_help() -> str:
    """``--config``'s help: every preset with its one-line summary."""
    lines = [f"{name}: {text}" for name, text in preset_summaries().items()]
    return "preset name or YAML file of parameters (default: default); presets:\n" + \
        "\n".join(lines).replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one flag per AMG parameter, named like ``--points-per-side``)."""
    p = _Parser(
        prog="segment-everything",
        formatter_class=_Formatter,
        description=textwrap.fill(
            "Automatic everything-masks with Segment Anything (MobileSAM by default), from one "
            "photo to a whole dataset. Runs are resumable: run the same command again after an "
            "interruption.", 92),
        epilog=EXAMPLES)
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image files, folders (searched recursively), or @LIST.txt files of paths")
    p.add_argument("--output", "-o", required=True, type=Path, metavar="DIR",
                   help="output folder (required; created if missing)")
    p.add_argument("--list", dest="list_files", action="append", default=[], metavar="FILE",
                   help="text file with one image or folder path per line (relative to the file); "
                        "repeatable (default: none)")
    p.add_argument("--glob", dest="pattern", default=None, metavar="PATTERN",
                   help="files to take from folders, e.g. '**/*.png' (default: image extensions, "
                        "recursive)")
    p.add_argument("--model", default="mobile_sam",
                   help="a model name (mobile_sam, vit_b/l/h, sam_hq_vit_b/l/h/tiny, "
                        "sam2.1_hiera_tiny/small/base_plus/large, efficient_sam_vitt/vits) or a "
                        "SAM v1 / MobileSAM / SAM-HQ checkpoint file (default: mobile_sam); a SAM 2 model "
                        "takes SAM 2's generator defaults")
    p.add_argument("--config", default="default", metavar="PRESET", help=_preset_help())
    p.add_argument("--device", default=None,
                   help="torch device, e.g. cpu or cuda (default: cpu; with --engine ray: cuda "
                        "when the cluster has GPUs)")

    out = p.add_argument_group("outputs")
    out.add_argument("--format", dest="formats", type=_formats, action="extend", default=None,
                     metavar="FORMAT",
                     help=f"{', '.join(FORMATS)}; several allowed, comma-separated or repeated "
                          "(default: json)")
    out.add_argument("--segmentation", choices=SEGMENTATIONS, default="rle",
                     help="COCO and Label Studio masks: rle (Label Studio: brush masks) or polygon "
                          "(holes bridged; one polygon per fragment) (default: rle)")
    out.add_argument("--category", default="object", help="COCO category name (default: object)")
    out.add_argument("--image-root", type=Path, default=None, metavar="DIR",
                     help="folder the COCO file_name is relative to (default: the deepest folder "
                          "holding every image)")
    out.add_argument("--subset", default="default", metavar="NAME",
                     help="subset of the COCO and YOLO layouts: annotations/instances_NAME.json, "
                          "images/NAME/, labels/NAME/ (default: default)")
    out.add_argument("--coco-images", type=Path, default=None, metavar="FILE",
                     help="existing COCO file to take image ids and file names from (matched by "
                          "file_name), so the COCO output is also a results file for it "
                          "(default: none, ids 1..N in input order)")
    out.add_argument("--image-root-url", default=None, metavar="URL",
                     help="URL prefix of the Label Studio tasks' images (default: "
                          "/data/local-files/?d=ROOT/ for Label Studio's local-files serving, ROOT "
                          "the image root's folder name)")
    out.add_argument("--min-area", type=int, default=None, metavar="PIXELS",
                     help="drop masks smaller than this many pixels (default: none)")
    out.add_argument("--max-area", type=int, default=None, metavar="PIXELS",
                     help="drop masks larger than this many pixels (default: none)")
    out.add_argument("--mask-nms-thresh", type=float, default=None, metavar="IOU",
                     help="drop a mask whose mask IoU with a higher predicted-IoU mask is above "
                          "this (default: off)")

    run = p.add_argument_group("run")
    run.add_argument("--overwrite", action="store_true",
                     help="redo every image, forgetting an earlier run in DIR (default: resume it)")
    run.add_argument("--workers", type=int, default=2, metavar="N",
                     help="threads decoding images ahead and writing outputs (default: 2)")
    run.add_argument("--threads", type=int, default=None, metavar="N",
                     help="torch threads for the model (default: the CPUs this process may use, "
                          "from its affinity mask and cgroup CPU quota)")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bar (default: a progress bar on stderr)")
    run.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                     help="refuse larger images (listed in errors.csv) before decoding them; 0: "
                          f"no limit (default: {DEFAULT_MAX_PIXELS}, which keeps a run within 2 GB "
                          "of memory; memory grows with the pixel count)")
    run.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local, or ray (Ray Data over a Ray cluster) (default: local)")
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


def _error(msg: object, code: int = 2) -> int:
    """Print ``segment-everything: error: <msg>`` on stderr (one line; only a failed weight
    download lists its sources below it); returns ``code``."""
    print(f"segment-everything: error: {msg}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (:data:`EXIT_CODES`: 0 all images done, 1 some
    failed or the run stopped, 2 usage or a run that cannot start, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"segment-everything: interrupted; run the same command again to resume in "
              f"{args.output}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback (see the module doc)
        if os.environ.get("SEGMENT_EVERYTHING_DEBUG", "") not in ("", "0"):
            raise
        if isinstance(exc, OSError) and exc.filename is not None:
            return _error(f"{exc.filename}: {exc.strerror or exc}", 1)
        return _error(f"unexpected {type(exc).__name__}: {exc} (set SEGMENT_EVERYTHING_DEBUG=1 "
                      f"for the traceback)", 1)


def _run(args: argparse.Namespace) -> int:
    """:func:`main` after parsing: build the options, collect the images, run, report."""
    overrides = {p.name: getattr(args, p.name) for p in GENERATION_FLAGS
                 if getattr(args, p.name) is not None}
    from .options import RunOptions
    from .preflight import StartError
    from .run import run_dataset
    from .state import RunLocked, RunMismatch, RunStopped

    if args.max_pixels is not None and args.max_pixels < 0:
        return _error(f"--max-pixels must be >= 0 (0: no limit), got {args.max_pixels}")
    try:
        config = AMGConfig.from_preset(args.config, **overrides)
        options = RunOptions(
            output=args.output, config=config, model=args.model, device=args.device,
            formats=tuple(args.formats or ("json",)), segmentation=args.segmentation,
            category=args.category, image_root=args.image_root, subset=args.subset,
            coco_images=args.coco_images,
            image_root_url=args.image_root_url,
            min_area=args.min_area,
            max_area=args.max_area, mask_nms_thresh=args.mask_nms_thresh,
            overwrite=args.overwrite, workers=args.workers, threads=args.threads,
            engine=args.engine, ray_address=args.ray_address, ray_actors=args.ray_actors,
            progress=args.progress, max_pixels=args.max_pixels or None)
        if not args.inputs and not args.list_files:
            return _error("no INPUT given (image files, folders, @list files or --list FILE)")
        images = collect_images(args.inputs, args.list_files, args.pattern)
    except ConfigError as exc:
        flag = next((n for n in overrides if str(exc).startswith(n + " ")), None)
        where = f"--{flag.replace('_', '-')}: " if flag else ""
        return _error(f"{where}{exc}" + ("" if flag else f" (with --config {args.config})"))
    except (ValueError, FileNotFoundError) as exc:
        return _error(exc)
    if not images:
        return _error("no images found in the inputs")

    from sam_model import CheckpointError  # heavy import after argument checks

    try:
        summary = run_dataset(images, options)
    except RunStopped as exc:
        return _error(exc, 1)
    except (StartError, RunMismatch, RunLocked, CheckpointError, ValueError, ImportError) as exc:
        return _error(exc)
    except KeyError as exc:
        return _error(exc.args[0] if exc.args else exc)

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
