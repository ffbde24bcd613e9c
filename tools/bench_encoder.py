"""Image encoder throughput: images one per call against several in one batch.

Answers "is it faster to batch several images through the image encoder?" for a model, device
and thread count. Inputs are random (B, 3, 1024, 1024) float32 tensors (already normalised and
padded, as ``Sam.encode_images`` builds them); the encoder's cost does not depend on pixel
values.

    python3 tools/bench_encoder.py --model mobile_sam --batch 2 --repeats 3
"""
from __future__ import annotations

import argparse
import time

import torch

from sam_model import load_model


def main(argv: list[str] | None = None) -> int:
    """Print, per repeat, the seconds for ``--batch`` images one by one and as one batch."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobile_sam", help="model name or checkpoint path")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=2, help="images per batch (>= 2)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    if args.batch < 2:
        ap.error("--batch must be at least 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    x = torch.randn(args.batch, 3, 1024, 1024, device=args.device)
    encoder = model.image_encoder

    def sync() -> None:
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        encoder(x[:1]), encoder(x)  # warm-up
        sync()
        print(f"{args.model} on {args.device}, {torch.get_num_threads()} threads")
        for _ in range(args.repeats):
            t = time.perf_counter()
            for i in range(args.batch):
                encoder(x[i:i + 1])
            sync()
            one_by_one = time.perf_counter() - t
            t = time.perf_counter()
            encoder(x)
            sync()
            batched = time.perf_counter() - t
            print(f"{args.batch} images one by one {one_by_one:.2f} s, "
                  f"as one batch {batched:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
