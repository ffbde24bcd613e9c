#!/usr/bin/env python3
"""Benchmark our MaskGenerator against the reference SamAutomaticMaskGenerator, side by side.

Both run in this one process on the same photos, weights and parameters. Per image it reports
wall seconds for each, the speed-up, peak resident memory of each run (Linux: the VmHWM
high-water mark, reset before every run through /proc/self/clear_refs), masks found, and the
parity figures (fraction of reference masks matched by ours at mask IoU >= 0.9 and vice versa).
The reference is a test-only oracle (MobileSAM's reference code, ``pip install -e .[test]``);
without it the tool times ours alone and says so.

    python3 tools/bench.py ../shared/images/dog.jpg ../shared/images/groceries.jpg
    python3 tools/bench.py ../shared/images/picture1.jpg --config crops --json out.json
    python3 tools/bench.py IMG --config fast --reference-config default   # fast preset vs ref defaults
    python3 tools/bench.py IMG --background-load 1   # both runs beside one busy process
    python3 tools/bench.py IMG --peer ultralytics     # also Ultralytics' SAM "everything" mode

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
from sam_model import load_model  # noqa: E402
from tools.common import make_reference_generator, parse_overrides, reference_params  # noqa: E402


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
    p.add_argument("--peer", choices=("ultralytics",), default=None,
                   help="also time a peer implementation on the same photos and weights")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: the CPUs this process may use)")
    p.add_argument("--background-load", type=int, default=0, metavar="N",
                   help="run everything beside N busy processes (default: 0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads or available_cpus())
    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        p.error(str(e))
    ours_cfg = AMGConfig.from_preset(args.config, **overrides).replace(output_mode="coco_rle")
    ref_cfg = AMGConfig.from_preset(args.reference_config or args.config, **overrides)
    model = load_model("mobile_sam", device=args.device)
    ours = MaskGenerator(model, ours_cfg)
    extra = {name: MaskGenerator(model, AMGConfig.from_preset(name, **overrides).replace(
        output_mode="coco_rle")) for name in args.also}
    ref = None if args.no_reference else reference_generator(ref_cfg, args.device)
    if ref is None and not args.no_reference:
        print("note: the reference (mobilesam-lite, test extra) is not installed; timing ours only")

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
        rows = _run_images(args, ours, extra, ref)
    _print_table(args, overrides, extra, rows)
    return 0


def _run_images(args, ours, extra, ref) -> list[dict]:
    """One row per image: times, CPU seconds, peaks, counts and parity (printed as JSON)."""
    rows = []
    for path in args.images:
        image, _ = load_image(path)
        row = {"image": path.name, "size": f"{image.shape[1]}x{image.shape[0]}"}
        our_masks, row["ours_s"], row["ours_peak_mb"], row["ours_cpu_s"] = timed(ours.generate, image)
        row["ours_masks"] = len(our_masks)
        if ref is not None:
            ref_masks, row["ref_s"], row["ref_peak_mb"], row["ref_cpu_s"] = timed(ref.generate, image)
            row["ref_masks"] = len(ref_masks)
            row["speedup"] = row["ref_s"] / row["ours_s"]
            row["ref_matched"], row["ours_matched"] = match_fractions(ref_masks, our_masks)
        for name, gen in extra.items():
            masks, row[f"{name}_s"], row[f"{name}_peak_mb"], row[f"{name}_cpu_s"] = timed(
                gen.generate, image)
            row[f"{name}_masks"] = len(masks)
            if ref is not None:
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
    print(f"ours: {args.config}{' ' + str(overrides) if overrides else ''}; reference: "
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
        args.json.write_text(json.dumps({"config": args.config, "overrides": overrides,
                                         "threads": torch.get_num_threads(),
                                         "background_load": args.background_load,
                                         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
