"""Where the time of one ``MaskGenerator.generate`` call goes, stage by stage.

The generator and the decoders label their stages with ``torch.profiler.record_function``;
this tool runs ``generate`` once per image under ``torch.profiler.profile`` (CPU activity) and
sums the labelled ranges:

- ``amg.image_encoder``: the image encoder, once per crop;
- ``amg.mask_decoder``: the point decoder (per-crop preparation and every batch), of which
  ``decoder.transformer`` (the two-way transformer) and ``decoder.mask_logits`` (output
  upscaling to low-res logits of the IoU survivors, and the crop-edge reject windows);
- ``amg.upscale_and_rle``: region upscaling, stability score, box, crop-edge filter and RLE of
  each survivor;
- ``amg.box_nms``: box NMS in each crop and across crops;
- ``amg.postprocess``: small-region clean-up and the quality levers, when enabled;
- ``total``: the whole ``generate`` call (wall clock).

Seconds are wall time in this process (the profiler adds a little per operator), so other
load on the machine shows up in them; run it on a quiet machine. Example::

    python3 tools/profile_stages.py ../shared/images/dog.jpg
    python3 tools/profile_stages.py ../shared/images/picture1.jpg --config crops --json p.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from amg import MaskGenerator
from amg.config import AMGConfig, ConfigError
from amg.io import ImageReadError, load_image
from sam_model import load_model

LABEL_PREFIXES = ("amg.", "decoder.")


def _bench_module() -> Any:
    """``tools/bench.py`` (for its ``--set`` parser), loaded by path: tools/ is no package."""
    spec = importlib.util.spec_from_file_location("tools_bench", Path(__file__).with_name("bench.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def profile_image(gen: MaskGenerator, image_path: Path) -> dict[str, Any]:
    """One ``generate`` call on ``image_path`` under the profiler.

    Returns:
        {"image", "size", "masks", "total_s", "stages": {label: {"s", "calls"}}}, seconds
        summed over the label's ranges (nested ranges of one label are not double-counted:
        the generator does not nest a label in itself).

    Raises:
        ImageReadError: the image cannot be read (from :func:`amg.io.load_image`).
    """
    image, _ = load_image(image_path)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        records = gen.generate(image)
        total = time.perf_counter() - t0
    stages = {e.key: {"s": round(e.cpu_time_total / 1e6, 3), "calls": e.count}
              for e in prof.key_averages() if e.key.startswith(LABEL_PREFIXES)}
    return {"image": image_path.name, "size": f"{image.shape[1]}x{image.shape[0]}",
            "masks": len(records), "total_s": round(total, 3), "stages": dict(sorted(stages.items()))}


def main(argv: list[str] | None = None) -> int:
    """Profile each image (see the module docstring); returns 0, or 2 on a bad preset/--set."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--config", default="default", help="preset name or YAML file")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="parameter overrides, JSON values")
    ap.add_argument("--model", default="mobile_sam")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=None,
                    help="profile the model with tools/bench.py's weights for --model: a "
                         "family without downloadable weights (SAM 2.1, SAM-HQ, EfficientSAM) "
                         "gets the seeded random weights of its reference pair (needs the test "
                         "extra); default: load_model(--model)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = AMGConfig.from_preset(args.config, **_bench_module().parse_overrides(args.set))
    except (ConfigError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.seed is None:
        model = load_model(args.model)
    else:
        bench = _bench_module()
        if bench.lowered_filters(args.model):  # SAM-HQ, EfficientSAM
            model = bench.random_weight_pair(args.model, config, args.seed).ours
        else:
            model, _ = bench.models(args.model, config, "cpu", args.seed, None, with_reference=True)
    gen = MaskGenerator(model, config)
    results = []
    for path in args.images:
        try:
            res = profile_image(gen, path)
        except ImageReadError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        results.append(res)
        parts = ", ".join(f"{k} {v['s']:.2f} s ({v['calls']})" for k, v in res["stages"].items())
        print(f"{res['image']} {res['size']}: total {res['total_s']:.2f} s, "
              f"{res['masks']} masks; {parts}")
    if args.json:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(),
                                         "config": args.config, "set": args.set,
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
