#!/usr/bin/env python3
"""Benchmark our MaskGenerator against the model family's official generator, side by side.

Both run in this one process on the same photos, weights and parameters. Per image it reports
wall seconds for each, the speed-up, peak resident memory of each run (Linux: the VmHWM
high-water mark, reset before every run through /proc/self/clear_refs), masks found, and the
parity figures (fraction of reference masks matched by ours at mask IoU >= 0.9 and vice versa).
The references are test-only oracles (``pip install -e .[test]``), one per model family
(``tools/common.py`` ``REFERENCE_FAMILIES``): for ``--model mobile_sam`` (default) MobileSAM's
``SamAutomaticMaskGenerator`` with the verified MobileSAM weights; for ``--model
sam2.1_hiera_tiny`` (``_small``, ``_base_plus``, ``_large``) the official
``SAM2AutomaticMaskGenerator``, both models holding the weights of ``--checkpoint`` (an official
file) or, without one, the same seeded random weights (``--seed``). Without the reference the
tool times ours alone and says so.

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
    python3 tools/bench.py IMG --background-load 1   # both runs beside one busy process
    python3 tools/bench.py IMG --peer ultralytics     # also Ultralytics' SAM "everything" mode
    python3 tools/bench.py IMG --sweep points size crops --plot docs/img/sweep.png
    python3 tools/bench.py IMG --model sam2.1_hiera_tiny                 # SAM 2 defaults, random weights
    python3 tools/bench.py IMG --model sam2.1_hiera_large --checkpoint sam2.1_hiera_large.pt --config sam2
    python3 tools/bench.py IMG --model sam_hq_vit_tiny --set points_per_side=16

``--background-load N`` starts N busy processes (``while True: pass``) for the whole benchmark,
so the reference and ours run under the same load, the situation of a machine shared with other
work. Each run's CPU seconds (all threads of this process) are reported beside its wall time.
Like the ``segment-everything`` command, this tool sets ``OMP_WAIT_POLICY=PASSIVE`` (unless it
is set) before torch loads, for both runs.

``--peer ultralytics`` also times Ultralytics' SAM "everything" mode (``SAM(mobile_sam.pt)``
with no prompt: its own grid generator, default settings) on the same photos with the same
``mobile_sam.pt``, and reports its masks and their match with the reference's. Ultralytics is
AGPL-3.0: it is in the ``bench`` extra only (``pip install -e .[bench]``), never a dependency
of the product, and this tool imports it only when asked.

``--sweep AXIS...`` measures how the cost grows on the first image instead: time and peak
memory against points per side (``points``: 8, 16, 32, 64), image size (``size``: the photo
resized to 0.3, 1, 4, 12 and 24 MP) and crop layers (``crops``: 0, 1, 2), one axis at a time
from the default parameters; the reference (MobileSAM's) runs where it fits the caps
(``--sweep-reference-max-points``, ``--sweep-reference-max-mp``, ``--sweep-reference-max-crops``:
its full-size masks of a batch take ``points_per_batch x 3 x H x W`` float32 bytes). ``--plot``
draws it (matplotlib, the ``eval`` extra).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amg.dataset.threads import available_cpus, prefer_passive_openmp  # noqa: E402  (no torch)

prefer_passive_openmp()  # before torch loads: OpenMP reads it once

import torch  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from amg import AMGConfig, MaskGenerator  # noqa: E402
from amg.io import load_image  # noqa: E402
from sam_model import build_model, model_table  # noqa: E402
from tools.common import (REFERENCE_FAMILIES, lowered_filters,  # noqa: E402
                          make_reference_generator, parse_overrides, random_weight_pair,
                          reference_family, reference_pair, reference_params)


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
    """(fn(*args), wall seconds, peak RSS MiB during the call, CPU seconds of this process
    during the call, all threads); peak reset before the call."""
    gc.collect()
    reset_peak_rss()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0, peak_rss_mb(), time.process_time() - c0


@contextmanager
def background_load(n: int):
    """``n`` busy processes (``python -c "while True: pass"``) for the block, then stopped."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5 if n else 0)  # let them start spinning
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def match_fractions(ref, ours, thresh=0.9):
    """(reference masks matched by ours, our masks matched by the reference) at mask IoU."""
    a = [r["segmentation"] for r in ref]
    b = [r["segmentation"] for r in ours]
    if not a or not b:
        same = float(len(a) == len(b))
        return same, same
    ious = mask_utils.iou(a, b, [0] * len(b))
    return float((ious.max(1) >= thresh).mean()), float((ious.max(0) >= thresh).mean())


class UltralyticsPeer:
    """Ultralytics' SAM "everything" mode with a MobileSAM checkpoint, as a generator of COCO
    RLE records (``segmentation`` only).

    Args:
        checkpoint: path of ``mobile_sam.pt``. device: e.g. ``"cpu"``.

    Raises:
        ImportError: ultralytics is not installed (the ``bench`` extra).
    """

    def __init__(self, checkpoint: Path, device: str = "cpu") -> None:
        from ultralytics import SAM
        self.model = SAM(str(checkpoint))
        self.device = device

    def generate(self, image) -> list[dict]:
        """(H, W, 3) uint8 RGB -> one record per mask Ultralytics returns."""
        import numpy as np
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # Ultralytics reads arrays as BGR
        result = self.model.predict(bgr, device=self.device, verbose=False)[0]
        if result.masks is None:
            return []
        masks = result.masks.data.cpu().numpy().astype(np.uint8)  # (N, H, W)
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        return [{"segmentation": r} for r in rles]


def reference_generator(cfg: AMGConfig, device: str = "cpu"):
    """MobileSAM reference generator with ``cfg``'s parameters on ``device``, or None if not
    installed."""
    try:
        return make_reference_generator(reference_params(cfg), device)
    except ImportError:
        return None


def models(name: str, cfg: AMGConfig, device: str, seed: int, checkpoint: Path | None,
           with_reference: bool):
    """(our model, the reference generator or None) for model ``name``: the family's pair with
    the same weights (``tools.common.reference_pair``); without the reference (not asked, or
    not installed) our model alone, with seeded random weights where the family's pair would
    have them (``build_model`` after ``torch.manual_seed(seed)``) or the checkpoint."""
    family = REFERENCE_FAMILIES[reference_family(name)]
    if with_reference:
        try:
            return reference_pair(name, cfg, device, seed, checkpoint)
        except ImportError:
            print(f"note: the reference ({family.dist}, test extra) is not installed; timing "
                  "ours only")
    from sam_model import load_model
    if family.random_weights and checkpoint is None:
        torch.manual_seed(seed)
        return build_model(name, device), None
    return load_model(checkpoint or name, device=device, arch=name if checkpoint else None), None


SWEEP_AXES = {"points": [8, 16, 32, 64], "size": [0.3, 1.0, 4.0, 12.0, 24.0], "crops": [0, 1, 2]}


def resized_to(image, megapixels: float):
    """``image`` (H, W, 3) uint8 resized (bicubic, aspect kept) to about ``megapixels`` MP."""
    import numpy as np
    from PIL import Image
    h, w = image.shape[:2]
    scale = (megapixels * 1e6 / (h * w)) ** 0.5
    size = (max(16, round(w * scale)), max(16, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def run_sweep(args, model, image, cfg: AMGConfig) -> list[dict]:
    """One row per (axis, value): ours and, within the caps, the reference; printed as JSON."""
    rows = []
    for axis in args.sweep:
        for value in SWEEP_AXES[axis]:
            img, params = image, {}
            if axis == "points":
                params["points_per_side"] = value
            elif axis == "crops":
                params["crop_n_layers"] = value
            else:
                img = resized_to(image, value)
            run_cfg = cfg.replace(**params)
            row = {"axis": axis, "value": value, "megapixels": round(img.shape[0] * img.shape[1] / 1e6, 2)}
            masks, row["ours_s"], row["ours_peak_mb"], row["ours_cpu_s"] = timed(
                MaskGenerator(model, run_cfg).generate, img)
            row["ours_masks"] = len(masks)
            fits = (run_cfg.points_per_side <= args.sweep_reference_max_points
                    and row["megapixels"] <= args.sweep_reference_max_mp
                    and run_cfg.crop_n_layers <= args.sweep_reference_max_crops)
            with_ref = fits and not args.no_reference and args.model == "mobile_sam"
            ref = reference_generator(run_cfg, args.device) if with_ref else None
            if ref is not None:
                ref_masks, row["ref_s"], row["ref_peak_mb"], row["ref_cpu_s"] = timed(ref.generate, img)
                row["ref_masks"] = len(ref_masks)
                row["speedup"] = row["ref_s"] / row["ours_s"]
                del ref
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def plot_sweep(rows: list[dict], path: Path, title: str) -> None:
    """Time per image and peak memory against each swept axis (log scales), ours and the
    reference, into ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    axes = [a for a in SWEEP_AXES if any(r["axis"] == a for r in rows)]
    labels = {"points": "points per side", "size": "image size (MP)", "crops": "crop layers"}
    fig, grid = plt.subplots(2, len(axes), figsize=(4.2 * len(axes), 6.4), squeeze=False)
    for j, axis in enumerate(axes):
        sub = [r for r in rows if r["axis"] == axis]
        x = [r["megapixels"] if axis == "size" else r["value"] for r in sub]
        for i, (key, unit) in enumerate((("_s", "seconds per image"), ("_peak_mb", "peak memory (MiB)"))):
            ax = grid[i][j]
            for who, style in (("ours", "o-"), ("ref", "s--")):
                pts = [(xv, r[who + key]) for xv, r in zip(x, sub) if who + key in r]
                if pts:
                    ax.plot(*zip(*pts), style, label="ours" if who == "ours" else "reference")
            ax.set_xlabel(labels[axis])
            ax.set_ylabel(unit)
            if axis != "crops":
                ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


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
    p.add_argument("--model", default="mobile_sam",
                   help="mobile_sam (default; verified weights), sam2.1_hiera_tiny / _small / "
                        "_base_plus / _large (weights of --checkpoint, else seeded random), or a "
                        "SAM-HQ / EfficientSAM name (seeded random weights in both)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="an official SAM 2.1 checkpoint file loaded into both models")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random weights when no checkpoint is given (default 0)")
    p.add_argument("--peer", choices=("ultralytics",), default=None,
                   help="also time a peer implementation on the same photos and weights")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: the CPUs this process may use)")
    p.add_argument("--background-load", type=int, default=0, metavar="N",
                   help="run everything beside N busy processes (default: 0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--sweep", nargs="+", choices=tuple(SWEEP_AXES), default=None,
                   help="cost against points per side, image size and/or crop layers (first image)")
    p.add_argument("--sweep-reference-max-points", type=int, default=32)
    p.add_argument("--sweep-reference-max-mp", type=float, default=4.0)
    p.add_argument("--sweep-reference-max-crops", type=int, default=1)
    p.add_argument("--plot", type=Path, default=None, help="--sweep: write the plot here (PNG)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads or available_cpus())
    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        p.error(str(e))
    try:
        reference_family(args.model)
        pair_family = False  # SAM v1 / SAM 2.1: REFERENCE_FAMILIES
    except ValueError:
        pair_family = True  # SAM-HQ / EfficientSAM: random_weight_pair
    if pair_family:
        overrides = {**lowered_filters(args.model), **overrides}
    try:
        ours_cfg = AMGConfig.from_preset(args.config, **overrides).replace(output_mode="coco_rle")
        ref_cfg = AMGConfig.from_preset(args.reference_config or args.config, **overrides)
    except ValueError as e:
        p.error(str(e))
    if pair_family:
        if not lowered_filters(args.model):
            known = [n for ref in REFERENCE_FAMILIES.values() for n in ref.names]
            known += [m.name for m in model_table() if lowered_filters(m.name)]
            p.error(f"--model {args.model}: no reference generator for it; known: {known}")
        try:
            pair = random_weight_pair(args.model, ref_cfg, args.seed, args.device)
        except (KeyError, ImportError, ValueError) as e:
            p.error(f"--model {args.model}: {e}")
        model, ref_generate = pair.ours, pair.reference
        print(f"{args.model}: random weights (seed {args.seed}) in ours and the reference "
              f"({pair.description})")
    else:
        model, ref = models(args.model, ref_cfg, args.device, args.seed, args.checkpoint,
                            not args.no_reference)
        ref_generate = None if ref is None else ref.generate
    if args.no_reference:
        ref_generate = None
    if args.sweep:
        with background_load(args.background_load):
            rows = run_sweep(args, model, load_image(args.images[0])[0], ours_cfg)
        if args.json:
            args.json.write_text(json.dumps({"sweep": args.sweep, "model": args.model,
                                             "config": args.config,
                                             "threads": torch.get_num_threads(), "rows": rows},
                                            indent=1))
        if args.plot:
            plot_sweep(rows, args.plot, f"{args.model}, {args.images[0].name}, {args.config} "
                                        f"preset, {torch.get_num_threads()} threads")
        return 0
    ours = MaskGenerator(model, ours_cfg)
    extra = {name: MaskGenerator(model, AMGConfig.from_preset(name, **overrides).replace(
        output_mode="coco_rle")) for name in args.also}

    peer = None
    if args.peer == "ultralytics":
        from sam_model.checkpoints import fetch_checkpoint
        try:
            peer = UltralyticsPeer(fetch_checkpoint("mobile_sam"), args.device)
        except ImportError:
            p.error("--peer ultralytics: ultralytics is not installed (pip install -e .[bench])")
    if peer is not None:
        extra["ultralytics"] = peer
    with background_load(args.background_load):
        rows = _run_images(args, ours, extra, ref_generate)
    _print_table(args, overrides, extra, rows)
    return 0


def _run_images(args, ours, extra, ref_generate) -> list[dict]:
    """One row per image: times, CPU seconds, peaks, counts and parity (printed as JSON)."""
    rows = []
    for path in args.images:
        image, _ = load_image(path)
        row = {"image": path.name, "size": f"{image.shape[1]}x{image.shape[0]}"}
        our_masks, row["ours_s"], row["ours_peak_mb"], row["ours_cpu_s"] = timed(ours.generate, image)
        row["ours_masks"] = len(our_masks)
        if ref_generate is not None:
            ref_masks, row["ref_s"], row["ref_peak_mb"], row["ref_cpu_s"] = timed(ref_generate, image)
            row["ref_masks"] = len(ref_masks)
            row["speedup"] = row["ref_s"] / row["ours_s"]
            row["ref_matched"], row["ours_matched"] = match_fractions(ref_masks, our_masks)
        for name, gen in extra.items():
            masks, row[f"{name}_s"], row[f"{name}_peak_mb"], row[f"{name}_cpu_s"] = timed(
                gen.generate, image)
            row[f"{name}_masks"] = len(masks)
            if ref_generate is not None:
                row[f"{name}_speedup"] = row["ref_s"] / row[f"{name}_s"]
                row[f"{name}_ref_matched"], row[f"{name}_matched"] = match_fractions(ref_masks, masks)
        row["load_avg_1min"] = os.getloadavg()[0]  # other work on the machine skews timings
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _print_table(args, overrides, extra, rows) -> None:
    """The markdown table of ``rows``, the settings line and the images/s; ``--json``."""
    header = ["image", "size", "ref_s", "ours_s", "speedup", "ref_cpu_s", "ours_cpu_s",
              "ref_peak_mb", "ours_peak_mb",
              "ref_masks", "ours_masks", "ref_matched", "ours_matched"]
    for name in extra:
        header += [f"{name}_s", f"{name}_speedup", f"{name}_peak_mb", f"{name}_masks",
                   f"{name}_ref_matched", f"{name}_matched"]
    header.append("load_avg_1min")
    print()
    try:
        family = REFERENCE_FAMILIES[reference_family(args.model)]
        weights = (str(args.checkpoint) if args.checkpoint else
                   f"random, seed {args.seed}" if family.random_weights else "verified")
    except ValueError:
        weights = f"random, seed {args.seed}"
    print(f"model: {args.model} ({weights} weights); ours: {args.config}"
          f"{' ' + str(overrides) if overrides else ''}; reference: "
          f"{args.reference_config or args.config}; threads {torch.get_num_threads()}; "
          f"device {args.device}; background load {args.background_load}; "
          f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}")
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
                                         "threads": torch.get_num_threads(),
                                         "background_load": args.background_load,
                                         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
