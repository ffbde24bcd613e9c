#!/usr/bin/env python3
"""``torch.compile`` against eager on the generator's hot stages, on one real photo.

Answers "does compiling the image encoder or the point decoder's per-prompt stages make
``segment-everything`` faster here?" for a model, device and thread count. Each stage is the
product's own code, compiled as it is (``torch.compile(fn, dynamic=False)``, inductor), on the
inputs the generator gives it for the photo's first crop:

- ``image_encoder``: the image encoder on the photo's preprocessed (1, 3, S, S) input;
- ``transformer``: one chunk of prompts through the two-way transformer
  (``FactoredGridDecoder.run_transformer``);
- ``upscaling``: one prompt's output upscaling after the first transposed convolution
  (``FactoredGridDecoder._logits_from_conv1``: norm, GELU, second transposed convolution,
  GELU, hypernetwork dot products) on the whole low-res map.

For each it prints the first compiled call's seconds (tracing and code generation; inductor's
on-disk cache makes a later process's first call shorter), the median of ``--repeats`` eager
and compiled calls, and the largest absolute difference of the outputs. Only for the SAM v1
family's factored decoder (MobileSAM, SAM ViT-B/L/H).

    python3 tools/bench_compile.py ../shared/images/dog.jpg --threads 1
    python3 tools/bench_compile.py ../shared/images/dog.jpg --stages transformer,upscaling

Exit code 0; 2 for bad arguments (unreadable image, unknown stage, a model without the
factored decoder).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amg import MaskGenerator  # noqa: E402
from amg.io import ImageReadError, load_image  # noqa: E402
from amg.upscale import RegionUpscaler  # noqa: E402
from sam_model import load_model  # noqa: E402
from sam_model.factored_decoder import FactoredPointDecoder  # noqa: E402

STAGES = ("image_encoder", "transformer", "upscaling")


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall milliseconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def _detached(out: Any) -> Any:
    """A copy of an output's tensors (a stage may write into a buffer it reuses)."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_detached(x) for x in out)
    return out


def _max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference over the (nested) tensors of two outputs, NaN entries
    (positions a stage leaves unset) ignored."""
    if isinstance(a, torch.Tensor):
        return float((a.float() - b.float()).nan_to_num().abs().max()) if a.numel() else 0.0
    if isinstance(a, (tuple, list)):
        return max((_max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)
    return _max_abs_diff(a.materialize(), b.materialize())  # FactoredImageTokens


def stage_calls(model: Any, image: np.ndarray, gen: MaskGenerator
                ) -> dict[str, tuple[Callable[..., Any], tuple]]:
    """Per stage, the product function and its arguments for the photo's first crop.

    Args:
        model: a SAM v1-family model (``load_model``). image: (H, W, 3) uint8 RGB.
        gen: a :class:`MaskGenerator` of ``model`` (its point grid and decoder options).

    Returns:
        ``{stage: (fn, args)}``; ``fn(*args)`` is the stage's work.

    Raises:
        ValueError: the model's point decoder is not the factored SAM v1 decoder.
    """
    h, w = image.shape[:2]
    x = model.preprocess(image)[0]
    emb = model.encode_image(image, torch.float32)
    ay, ax = model.low_res_to_image(emb)
    dec = model.point_decoder(emb, torch.float32, RegionUpscaler.needed_low_res(ay, ax),
                              **gen.decoder_options)
    if not isinstance(dec, FactoredPointDecoder):
        raise ValueError(f"{model.name}: its point decoder is {type(dec).__name__}, "
                         "not the factored SAM v1 decoder this tool measures")
    gd, ctx = dec.decoder, dec.ctx
    points = torch.from_numpy(gen.point_grids[0] * np.array([[w, h]]))
    sparse = dec.sparse_fn(points[:dec.chunk_size])
    tokens, img = gd.run_transformer(ctx, sparse, dec.final_tokens, dec.token_counts)
    tok, img = tokens[:1], img[:1]
    weights, rows_w1 = gd.mask_inputs(tok, img, [1, 2, 3])
    th, tw = dec.token_hw
    gh, gw = ctx.grid_hw
    r = img.coef.shape[1]
    coef = img.coef[0].view(r, gh, gw)[:, :th, :tw].reshape(r, th * tw)
    a = img.scale[0].view(gh, gw)[:th, :tw].reshape(th * tw, 1)
    base = ctx.conv1_base.view(gh, gw, -1)[:th, :tw].reshape(th * tw, -1)
    b1, b2 = gd._upscaling_biases(ctx, (0, th, 0, tw))
    f = torch.addcmul(b1, a, base).addmm_(coef.T, rows_w1[0])
    stats = gd.norm_stats(img, ctx, rows_w1) if gd.group_norm else None
    out = torch.empty(weights.shape[1], 4 * th, 4 * tw)

    def upscaling(f, weights, out, b2, stats):
        return gd._logits_from_conv1(f, weights, th, tw, out, b2,
                                     None if stats is None else stats[0])
    return {
        "image_encoder": (model.image_encoder, (x,)),
        "transformer": (gd.run_transformer, (ctx, sparse, dec.final_tokens, dec.token_counts)),
        "upscaling": (upscaling, (f, weights[0], out, b2, stats)),
    }


def main(argv: list[str] | None = None) -> int:
    """Measure the chosen stages eager and compiled; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", type=Path)
    ap.add_argument("--model", default="mobile_sam", help="model name or checkpoint path (SAM v1 family)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per stage and mode")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    args = ap.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        print(f"error: --stages: unknown stage {bad[0]!r} (choose from {', '.join(STAGES)})", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print(f"error: --repeats must be >= 1, got {args.repeats}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        image = load_image(args.image)[0]
    except ImageReadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = load_model(args.model, device=args.device)
    gen = MaskGenerator(model)
    with torch.inference_mode():
        try:
            calls = stage_calls(model, image, gen)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
        print(f"{args.model} on {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
              f"{args.image.name} {image.shape[1]}x{image.shape[0]}")
        print("| stage | compile (s, first call) | eager (ms) | compiled (ms) | compiled / eager | max abs diff |")
        print("|---|---|---|---|---|---|")
        for name in stages:
            fn, fargs = calls[name]
            compiled = torch.compile(fn, dynamic=False)
            t = time.perf_counter()
            got = _detached(compiled(*fargs))
            sync()
            compile_s = time.perf_counter() - t
            want = fn(*fargs)
            diff = _max_abs_diff(got, want)
            eager_ms = _median_ms(lambda: (fn(*fargs), sync()), args.repeats)
            comp_ms = _median_ms(lambda: (compiled(*fargs), sync()), args.repeats)
            print(f"| {name} | {compile_s:.1f} | {eager_ms:.2f} | {comp_ms:.2f} | "
                  f"{comp_ms / eager_ms:.2f} | {diff:.2g} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
