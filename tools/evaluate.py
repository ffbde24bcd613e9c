#!/usr/bin/env python3
"""Mask quality as class-agnostic object-proposal recall on a COCO dataset (SAM paper §7.3, D.3).

Every generated mask is a proposal scored by mean(predicted IoU, stability score); pycocotools
COCOeval "segm" with useCats = 0, crowd ground truth ignored. One report row per preset (ours)
and per --reference run (the reference SamAutomaticMaskGenerator of MobileSAM, a test-only
oracle: pip install -e ".[test]"), all on the same images: AR@10/100/1000 over mask IoU
0.50:0.95, AR@1000 for small/medium/large objects, masks per image, seconds per image
(generation only). See docs/quality.md and the amg.evaluation package.

    python3 tools/evaluate.py --limit 12 --preset default --reference --cache .eval_cache \\
        --json .eval_cache/report.json --markdown .eval_cache/report.md --plots .eval_cache/plots
    python3 tools/evaluate.py --image-ids 5001,10764 --preset "default:points_per_side=8"
    python3 tools/evaluate.py --limit 4 --preset crops --preset configs/my.yaml --set pred_iou_thresh=0.8

--preset NAME[:KEY=VALUE,...] takes a preset name or YAML path, optionally with overrides for
that row only; --set KEY=VALUE overrides apply to every row (reference rows included). Values
are JSON (16, 0.8, null) or plain strings. With --cache DIR each image's proposals are stored
per row under DIR/<row>-<key hash>/ (key: kind, parameters, code fingerprint or package
version, weights, device), so reruns and interrupted runs only compute what is missing.
Exit code: 0 done, 1 a requested row could not run (e.g. the reference is not installed),
2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amg.config import AMGConfig, ConfigError  # noqa: E402
from amg.evaluation.errors import EvaluationError  # noqa: E402
from amg.evaluation.ground_truth import DEFAULT_DATASET, SPLITS, load_dataset  # noqa: E402
from amg.evaluation.plots import write_plots  # noqa: E402
from amg.evaluation.report import evaluate_sources, format_markdown  # noqa: E402
from amg.evaluation.sources import ProposalSource, our_source  # noqa: E402
from amg.io import ImageReadError  # noqa: E402
from tools.common import (REFERENCE_DIST, make_reference_generator, parse_overrides,  # noqa: E402
                          reference_params)


def parse_preset_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME[:K=V,K=V]`` to ``(NAME, {K: V})``; a colon not followed by ``K=V`` is part of NAME."""
    name, sep, rest = spec.partition(":")
    if sep and "=" in rest:
        return name, parse_overrides([p for p in rest.split(",") if p], source=f"--preset {spec}",
                                     plain_strings=True)
    return spec, {}


def reference_source(preset: str, overrides: dict[str, Any], device: str) -> ProposalSource | None:
    """The reference ``SamAutomaticMaskGenerator`` (mobilesam-lite, model ``vit_t`` with our
    verified ``mobile_sam.pt``) with a preset's parameters, or None when the oracle is not
    installed. ``default`` equals the reference's own defaults (tests/test_config.py).

    Raises:
        ConfigError: unknown preset, parameter or value.
    """
    import importlib.metadata
    import importlib.util
    cfg = AMGConfig.from_preset(preset, **overrides)
    if importlib.util.find_spec("mobilesam_lite") is None:
        return None
    params = reference_params(cfg)
    from sam_model.checkpoints import KNOWN_CHECKPOINTS
    key = {"kind": "reference", "package": REFERENCE_DIST,
           "version": importlib.metadata.version(REFERENCE_DIST),
           "model": {"name": "mobile_sam", "sha256": KNOWN_CHECKPOINTS["mobile_sam"].sha256},
           "device": device, "params": params}

    def make():
        return make_reference_generator(params, device)

    label = "reference" + ("" if preset == "default" else f":{preset}")
    if overrides:
        label += f"[{','.join(f'{k}={v}' for k, v in overrides.items())}]"
    return ProposalSource(name=label, key=key, make_generator=make)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", default=None, metavar="NAME[:K=V,...]",
                   help="a row with our generator: preset name or YAML path, optional per-row "
                        "overrides (repeatable; default: one 'default' row unless --reference)")
    p.add_argument("--reference", action="append", nargs="?", const="default", default=None,
                   metavar="PRESET", help="a row with the reference generator, with the reference "
                   "defaults or PRESET's parameters (repeatable; needs the test extra)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="parameter override for every row (repeatable)")
    p.add_argument("--dataset", type=Path, default=DEFAULT_DATASET,
                   help="COCO dataset folder (default: %(default)s)")
    p.add_argument("--annotations", type=Path, default=None,
                   help="instances JSON (default: DATASET/annotations/instances_val2017.json)")
    p.add_argument("--images-dir", type=Path, default=None,
                   help="folder of the images (default: DATASET/val2017)")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate the first N images (ascending image id, or --image-ids order)")
    p.add_argument("--image-ids", default=None, help="comma-separated image ids to evaluate")
    p.add_argument("--split", choices=SPLITS, default=None,
                   help="one fixed half of the images: 'tune' (even positions in ascending id "
                        "order) or 'report' (odd positions); presets are tuned on the first")
    p.add_argument("--cache", type=Path, default=None, help="per-image proposal cache folder")
    p.add_argument("--json", type=Path, default=None, help="write the full report (JSON) here")
    p.add_argument("--markdown", type=Path, default=None, help="write the Markdown table here")
    p.add_argument("--plots", type=Path, default=None, help="write two PNG plots into this folder")
    p.add_argument("--model", default="mobile_sam", help="our model: name or checkpoint file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation; returns the exit code (0 ok, 1 a row skipped, 2 bad arguments)."""
    args = build_parser().parse_args(argv)
    try:
        common = parse_overrides(args.set, source="--set", plain_strings=True)
        ids = None
        if args.image_ids:
            try:
                ids = [int(t) for t in args.image_ids.split(",") if t.strip()]
            except ValueError:
                raise EvaluationError(f"--image-ids: integers separated by commas expected, got {args.image_ids!r}")
        dataset = load_dataset(args.annotations or args.dataset / "annotations" / "instances_val2017.json",
                               args.images_dir or args.dataset / "val2017", limit=args.limit, image_ids=ids,
                               split=args.split)
        presets = args.preset if args.preset is not None else ([] if args.reference else ["default"])
        sources: list[ProposalSource] = []
        for spec in presets:
            name, own = parse_preset_spec(spec)
            sources.append(our_source(name, {**common, **own}, model=args.model, device=args.device))
        skipped = []
        for spec in args.reference or []:
            name, own = parse_preset_spec(spec)
            src = reference_source(name, {**common, **own}, args.device)
            if src is None:
                skipped.append(spec)
                print(f"note: --reference {spec} skipped: the reference oracle ({REFERENCE_DIST}) is not "
                      f"installed; install the test extra: pip install -e '.[test]'", file=sys.stderr)
            else:
                sources.append(src)
    except (ConfigError, EvaluationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    try:
        report = evaluate_sources(sources, dataset, cache=args.cache, progress=not args.no_progress)
    except (EvaluationError, ImageReadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report["command"] = " ".join(["python3", "tools/evaluate.py", *(argv if argv is not None else sys.argv[1:])])
    table = format_markdown(report)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(f"`{report['command']}`\n\n{table}")
    if args.plots:
        try:
            for path in write_plots(report, args.plots):
                print(f"plot: {path}")
        except EvaluationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
