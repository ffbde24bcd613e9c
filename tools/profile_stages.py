#!/usr/bin/env python3
"""Where the time of one ``MaskGenerator.generate`` call goes, stage by stage.

Wraps the generator's stages with wall-clock timers (no profiler overhead inside them) and runs
``generate`` once per image:

- ``encoder``: the image encoder, once per crop;
- ``transformer``: the two-way transformer, one call per decoder chunk
  (``FactoredGridDecoder.run_transformer``);
- ``mask_logits``: output upscaling to low-resolution logits of the prompts with a mask above
  the predicted-IoU threshold (``FactoredGridDecoder.predict_mask_logits``);
- ``upscale``: region upscaling + stability score of each IoU survivor
  (``RegionUpscaler.upscale``);
- ``box``, ``edge``, ``rle``: box, crop-edge filter and RLE of each stability survivor;
- ``small_regions``: ``min_mask_region_area`` clean-up, when enabled;
- ``total``: the whole ``generate`` call.

Seconds are wall time in this process, so other load on the machine shows up in them; run it on
a quiet machine. Example::

    python3 tools/profile_stages.py ../shared/images/dog.jpg
    python3 tools/profile_stages.py ../shared/images/picture1.jpg --config crops --json p.json
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

import amg.generator as generator_module
import amg.upscale as upscale_module
from amg import MaskGenerator
from amg.config import AMGConfig, ConfigError
from amg.io import ImageReadError, load_image
from sam_model import load_model
from amg.generator import DECODER


def _bench_module() -> Any:
    """``tools/bench.py`` (for its ``--set`` parser), loaded by path: tools/ is no package."""
    spec = importlib.util.spec_from_file_location("tools_bench", Path(__file__).with_name("bench.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

STAGES = ("encoder", "transformer", "mask_logits", "upscale", "box", "edge", "rle",
          "small_regions")


class StageTimer:
    """Accumulated wall seconds and call counts per stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter[str] = collections.Counter()

    def wrap(self, owner: Any, attr: str, stage: str) -> Callable[[], None]:
        """Replace ``owner.attr`` by a timed wrapper; returns a function that restores it."""
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t0
                self.calls[stage] += 1

        setattr(owner, attr, timed)
        return lambda: setattr(owner, attr, original)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def profile_image(gen: MaskGenerator, image_path: Path, timer: StageTimer) -> dict[str, Any]:
    """One ``generate`` call on ``image_path`` with the stage timers reset first.

    Returns:
        {"image", "size", "masks", "total_s", "stages": {name: {"s", "calls"}}}.

    Raises:
        ImageReadError: the image cannot be read (from :func:`amg.io.load_image`).
    """
    image, _ = load_image(image_path)
    timer.reset()
    t0 = time.perf_counter()
    records = gen.generate(image)
    total = time.perf_counter() - t0
    stages = {name: {"s": round(timer.seconds[name], 3), "calls": timer.calls[name]}
              for name in STAGES if timer.calls[name]}
    return {"image": image_path.name, "size": f"{image.shape[1]}x{image.shape[0]}",
            "masks": len(records), "total_s": round(total, 3), "stages": stages}


def install_timers(timer: StageTimer, model: Any) -> list[Callable[[], None]]:
    """Wrap the stages listed in the module docstring; returns the restore functions."""
    return [
        timer.wrap(type(model), "encode_image", "encoder"),
        timer.wrap(DECODER, "run_transformer", "transformer"),
        timer.wrap(DECODER, "predict_mask_logits", "mask_logits"),
        timer.wrap(upscale_module.RegionUpscaler, "upscale", "upscale"),
        timer.wrap(generator_module, "region_box_xyxy", "box"),
        timer.wrap(generator_module, "is_box_near_crop_edge", "edge"),
        timer.wrap(generator_module, "region_to_rle", "rle"),
        timer.wrap(generator_module, "remove_small_regions_and_dedupe", "small_regions"),
    ]


def main(argv: list[str] | None = None) -> int:
    """Profile each image (see the module docstring); returns 0, or 2 on a bad preset/--set."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--config", default="default", help="preset name or YAML file")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="parameter overrides, JSON values")
    ap.add_argument("--model", default="mobile_sam")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = AMGConfig.from_preset(args.config, **_bench_module().parse_overrides(args.set))
    except (ConfigError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = load_model(args.model)
    gen = MaskGenerator(model, config)
    timer = StageTimer()
    restore = install_timers(timer, model)
    results = []
    try:
        for path in args.images:
            try:
                res = profile_image(gen, path, timer)
            except ImageReadError as e:
                print(f"error: {e}", file=sys.stderr)
                continue
            results.append(res)
            parts = ", ".join(f"{k} {v['s']:.2f} s ({v['calls']})" for k, v in res["stages"].items())
            print(f"{res['image']} {res['size']}: total {res['total_s']:.2f} s, "
                  f"{res['masks']} masks; {parts}")
    finally:
        for r in restore:
            r()
    if args.json:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(),
                                         "config": args.config, "set": args.set,
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
