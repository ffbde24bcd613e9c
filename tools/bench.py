#!/usr/bin/env python3
"""Benchmark our MaskGenerator against the reference SamAutomaticMaskGenerator, side by side.

Both run in this one process on the same photos, weights and parameters. Per image it reports
wall seconds for each, the speed-up, peak resident memory of each run (Linux: the VmHWM
high-water mark, reset before every run through /proc/self/clear_refs), masks found, and the
parity figures (fraction of reference masks matched by ours at mask IoU >= 0.9 and vice versa).
The reference is a test-only oracle (MobileSAM's reference code, ``pip install -e .[test]``);
without it the tool times ours alone and says so.

``--model`` (default ``mobile_sam``, real weights) also takes the SAM-HQ and EfficientSAM names:
then ours and the family's reference run with the same seeded random weights (the parity
tests' weights, so these runs need the test extra and ``../shared/oracles``) and filters
lowered so that random-weight masks pass (``tools.common.RANDOM_WEIGHT_FAMILIES``, before
``--set``). References: SAM-HQ's own ``SamAutomaticMaskGenerator`` (``segment_anything_hq``);
for EfficientSAM, which has no generator, the straightforward grid generator over the official
model (``tests/grid_generators.py``).

    python3 tools/bench.py ../shared/images/dog.jpg ../shared/images/groceries.jpg
    python3 tools/bench.py ../shared/images/picture1.jpg --config crops --json out.json
    python3 tools/bench.py IMG --config fast --reference-config default   # fast preset vs ref defaults
    python3 tools/bench.py IMG --model sam_hq_vit_tiny --set points_per_side=16
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amg import AMGConfig, MaskGenerator  # noqa: E402
from amg.io import load_image  # noqa: E402
from sam_model import load_model  # noqa: E402
from tools.common import (lowered_filters, make_reference_generator, parse_overrides,  # noqa: E402
                          random_weight_pair, reference_params)


def reset_peak_rss() -> bool:
    """Reset the process's peak-RSS mark (Linux >= 4.0); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size since the last reset, MiB (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn, *args):
    """(fn(*args), wall seconds, peak RSS MiB during the call); peak reset before the call."""
    gc.collect()
    reset_peak_rss()
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0, peak_rss_mb()


def match_fractions(ref, ours, thresh=0.9):
    """(reference masks matched by ours, our masks matched by the reference) at mask IoU."""
    a = [r["segmentation"] for r in ref]
    b = [r["segmentation"] for r in ours]
    if not a or not b:
        same = float(len(a) == len(b))
        return same, same
    ious = mask_utils.iou(a, b, [0] * len(b))
    return float((ious.max(1) >= thresh).mean()), float((ious.max(0) >= thresh).mean())


def reference_generator(cfg: AMGConfig, device: str = "cpu"):
    """MobileSAM reference generator with ``cfg``'s parameters on ``device``, or None if not
    installed."""
    try:
        return make_reference_generator(reference_params(cfg), device)
    except ImportError:
        return None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docstring); prints the table, returns 0."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--config", default="default", help="our preset (name or YAML)")
    p.add_argument("--reference-config", default=None,
                   help="preset for the reference run (default: same as --config)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="parameter overrides applied to both runs, JSON values")
    p.add_argument("--also", action="append", default=[], metavar="PRESET",
                   help="another of our presets to time against the same reference run "
                        "(repeatable), e.g. --also fast; its columns are suffixed with the name")
    p.add_argument("--no-reference", action="store_true", help="time ours only")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="mobile_sam",
                   help="mobile_sam (real weights, default), or a SAM-HQ / EfficientSAM name "
                        "(random seeded weights in ours and the reference)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        p.error(str(e))
    random_weights = args.model != "mobile_sam"
    if random_weights:
        overrides = {**lowered_filters(args.model), **overrides}
    ours_cfg = AMGConfig.from_preset(args.config, **overrides).replace(output_mode="coco_rle")
    ref_cfg = AMGConfig.from_preset(args.reference_config or args.config, **overrides)
    ref_generate = None
    if random_weights:
        try:
            pair = random_weight_pair(args.model, ref_cfg, args.seed, args.device)
        except (KeyError, ImportError, ValueError) as e:
            p.error(f"--model {args.model}: {e}")
        model, ref_generate = pair.ours, pair.reference
        print(f"{args.model}: random weights (seed {args.seed}) in ours and the reference "
              f"({pair.description})")
    else:
        model = load_model("mobile_sam", device=args.device)
        ref = None if args.no_reference else reference_generator(ref_cfg, args.device)
        ref_generate = None if ref is None else ref.generate
        if ref is None and not args.no_reference:
            print("note: the reference (mobilesam-lite, test extra) is not installed; timing ours only")
    if args.no_reference:
        ref_generate = None
    ours = MaskGenerator(model, ours_cfg)
    extra = {name: MaskGenerator(model, AMGConfig.from_preset(name, **overrides).replace(
        output_mode="coco_rle")) for name in args.also}

    rows = []
    for path in args.images:
        image, _ = load_image(path)
        row = {"image": path.name, "size": f"{image.shape[1]}x{image.shape[0]}"}
        our_masks, row["ours_s"], row["ours_peak_mb"] = timed(ours.generate, image)
        row["ours_masks"] = len(our_masks)
        if ref_generate is not None:
            ref_masks, row["ref_s"], row["ref_peak_mb"] = timed(ref_generate, image)
            row["ref_masks"] = len(ref_masks)
            row["speedup"] = row["ref_s"] / row["ours_s"]
            row["ref_matched"], row["ours_matched"] = match_fractions(ref_masks, our_masks)
        for name, gen in extra.items():
            masks, row[f"{name}_s"], row[f"{name}_peak_mb"] = timed(gen.generate, image)
            row[f"{name}_masks"] = len(masks)
            if ref_generate is not None:
                row[f"{name}_speedup"] = row["ref_s"] / row[f"{name}_s"]
                row[f"{name}_ref_matched"], row[f"{name}_matched"] = match_fractions(ref_masks, masks)
        row["load_avg_1min"] = os.getloadavg()[0]  # other work on the machine skews timings
        rows.append(row)
        print(json.dumps(row), flush=True)

    header = ["image", "size", "ref_s", "ours_s", "speedup", "ref_peak_mb", "ours_peak_mb",
              "ref_masks", "ours_masks", "ref_matched", "ours_matched"]
    for name in extra:
        header += [f"{name}_s", f"{name}_speedup", f"{name}_peak_mb", f"{name}_masks",
                   f"{name}_ref_matched", f"{name}_matched"]
    header.append("load_avg_1min")
    print()
    print(f"model {args.model}; ours: {args.config}{' ' + str(overrides) if overrides else ''}; reference: "
          f"{args.reference_config or args.config}; threads {torch.get_num_threads()}; "
          f"device {args.device}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = []
        for h in header:
            v = row.get(h, "–")
            cells.append(f"{v:.2f}" if isinstance(v, float) else str(v))
        print("| " + " | ".join(cells) + " |")
    total = sum(r["ours_s"] for r in rows)
    print(f"ours: {len(rows) / total:.3f} images/s over {len(rows)} image(s)")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "seed": args.seed,
                                         "config": args.config, "overrides": overrides,
                                         "threads": torch.get_num_threads(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
