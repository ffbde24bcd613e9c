#!/usr/bin/env python3
"""GPU check in one run: CUDA-vs-CPU parity, then images/s and peak GPU memory per model.

1. Parity: MobileSAM (real weights) with the default parameters on the first photo, on the CPU
   in float32 and on the GPU in float32 and bfloat16 (where the GPU has it): the fraction of the
   CPU masks matched by the GPU's at mask IoU >= 0.9, and the reverse.
2. Speed: for each model, one warm-up image, then every photo timed (wall seconds with
   ``torch.cuda.synchronize``), images/s, masks, and the peak GPU memory
   (``torch.cuda.max_memory_allocated``, MiB). MobileSAM runs with its real weights and the
   default parameters, against the reference generator (``mobilesam_lite``) where it is
   installed; the other models (``--random-models``, default ViT-H, SAM 2.1 Hiera-L, SAM-HQ
   ViT-H) run with seeded random weights and the filters lowered (``RANDOM_WEIGHT_PARAMS``)
   so that their masks pass, which makes them a timing of the decoder path and not of quality.
3. Everything is written to ``--json`` (committed into ``docs/``) and printed as a table.

The whole check stops adding rows once ``--budget-s`` seconds have passed. Run it with
``tools/gpu_check.sh``; on a CPU (``--device cpu``) it runs the same steps for a smoke test.

    python3 tools/gpu_check.py --checkpoint mobile_sam.pt --images examples/dog.jpg --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from amg import AMGConfig, MaskGenerator  # noqa: E402
from amg.io import load_image  # noqa: E402
from sam_model import build_model, load_model  # noqa: E402

# Filters for random-weight models: their predicted IoU and stability are meaningless, so the
# thresholds are lowered until masks pass (the decoder and upscaling then do their full work).
RANDOM_WEIGHT_PARAMS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
DEFAULT_RANDOM_MODELS = ("vit_h", "sam2.1_hiera_large", "sam_hq_vit_h")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def match_fractions(a: list[dict], b: list[dict], thresh: float = 0.9) -> tuple[float, float]:
    """(masks of ``a`` matched by ``b``, masks of ``b`` matched by ``a``) at mask IoU >=
    ``thresh``; records with COCO RLE ``segmentation``."""
    from pycocotools import mask as mask_utils
    ra, rb = [r["segmentation"] for r in a], [r["segmentation"] for r in b]
    if not ra or not rb:
        same = float(len(ra) == len(rb))
        return same, same
    ious = mask_utils.iou(ra, rb, [0] * len(rb))
    return float((ious.max(1) >= thresh).mean()), float((ious.max(0) >= thresh).mean())


def time_generator(generate, images: list, device: torch.device) -> dict:
    """One warm-up call on ``images[0]``, then each image timed. Returns seconds per image,
    images/s, masks per image and peak GPU memory (MiB, CUDA only)."""
    generate(images[0])
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, masks = [], []
    for image in images:
        t0 = time.perf_counter()
        records = generate(image)
        _sync(device)
        seconds.append(time.perf_counter() - t0)
        masks.append(len(records))
    out = {"s_per_image": [round(s, 4) for s in seconds], "masks": masks,
           "images_per_s": round(len(seconds) / sum(seconds), 3)}
    if device.type == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def reference_generator(checkpoint: Path, device: torch.device):
    """The MobileSAM reference generator with the default parameters, or None if
    ``mobilesam_lite`` is not installed."""
    try:
        from mobilesam_lite.mobile_sam import SamAutomaticMaskGenerator, sam_model_registry
    except ImportError:
        return None
    sam = sam_model_registry["vit_t"](checkpoint=str(checkpoint)).to(device).eval()
    return SamAutomaticMaskGenerator(sam, output_mode="coco_rle")


def main(argv: list[str] | None = None) -> int:
    """Run the check (see the module docstring); returns 0, or 2 when the device is missing."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="mobile_sam", help="mobile_sam.pt path or name")
    ap.add_argument("--images", nargs="+", type=Path, default=[Path("examples/dog.jpg")])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--random-models", nargs="*", default=list(DEFAULT_RANDOM_MODELS))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="parameter overrides for every run, JSON values (e.g. points_per_side=8)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="stop adding rows after this many seconds (default: 420)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from tools.common import parse_overrides
    overrides = parse_overrides(args.set)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: --device {args.device}: torch sees no CUDA device", file=sys.stderr)
        return 2
    start = time.perf_counter()
    images = [load_image(p)[0] for p in args.images]
    report: dict = {"torch": torch.__version__, "python": platform.python_version(),
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
                    platform.processor() or "cpu", "images": [p.name for p in args.images],
                    "overrides": overrides, "rows": []}
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    cfg = AMGConfig(output_mode="coco_rle").replace(**overrides)

    # 1. parity, CUDA vs CPU
    cpu_model = load_model(args.checkpoint, device="cpu")
    cpu_records = MaskGenerator(cpu_model, cfg).generate(images[0])
    model = load_model(args.checkpoint, device=device)
    parity = {}
    for dtype in ["float32"] + (["bfloat16"] if bf16 else []):
        recs = MaskGenerator(model, cfg.replace(compute_dtype=dtype)).generate(images[0])
        a, b = match_fractions(cpu_records, recs)
        parity[dtype] = {"cpu_matched": round(a, 4), "device_matched": round(b, 4),
                         "cpu_masks": len(cpu_records), "device_masks": len(recs)}
    report["parity_vs_cpu_float32"] = parity
    print("parity vs CPU float32:", json.dumps(parity), flush=True)

    # 2. speed
    def add(name: str, weights: str, dtype: str, generate) -> None:
        row = {"model": name, "weights": weights, "dtype": dtype}
        try:
            row.update(time_generator(generate, images, device))
        except (ValueError, RuntimeError) as exc:  # e.g. a dtype the family does not run
            row["error"] = f"{type(exc).__name__}: {exc}"
            print(json.dumps(row), flush=True)
            return
        report["rows"].append(row)
        print(json.dumps(row), flush=True)

    for dtype in ["float32"] + (["bfloat16"] if bf16 else []):
        add("mobile_sam", "real", dtype, MaskGenerator(model, cfg.replace(compute_dtype=dtype)).generate)
    ref = reference_generator(Path(str(args.checkpoint)), device) if Path(
        str(args.checkpoint)).is_file() else None
    if ref is not None:
        add("mobile_sam (reference)", "real", "float32", ref.generate)
    for name in args.random_models:
        if time.perf_counter() - start > args.budget_s:
            report.setdefault("skipped", []).append(name)
            continue
        torch.manual_seed(0)
        rand = build_model(name, device=device)
        rcfg = cfg.replace(**{**RANDOM_WEIGHT_PARAMS, **overrides})
        for dtype in ["float32"] + (["bfloat16"] if bf16 else []):
            try:
                gen = MaskGenerator(rand, rcfg.replace(compute_dtype=dtype))
            except ValueError as exc:
                report["rows"].append({"model": name, "weights": "random", "dtype": dtype,
                                       "error": f"{type(exc).__name__}: {exc}"})
                continue
            add(name, "random", dtype, gen.generate)
        del rand
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["total_s"] = round(time.perf_counter() - start, 1)

    print("\n| model | weights | dtype | images/s | s/image | masks | peak GPU MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in report["rows"]:
        if "error" in r:
            print(f"| {r['model']} | {r['weights']} | {r['dtype']} | {r['error']} | | | |")
            continue
        print(f"| {r['model']} | {r['weights']} | {r['dtype']} | {r['images_per_s']} | "
              f"{sum(r['s_per_image']) / len(r['s_per_image']):.3f} | {r['masks']} | "
              f"{r.get('peak_gpu_mib', '–')} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
