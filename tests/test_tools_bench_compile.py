"""``tools/bench_compile.py``: each stage it times is the generator's own work on the photo,
and a compiled stage's output is the eager one's within float rounding (speed itself is
measured by running the tool, never asserted in a test)."""
from __future__ import annotations

import re

import torch

from amg import MaskGenerator
from amg.upscale import RegionUpscaler

from .conftest import read_photo, shared_path
from .test_tools_bench import load_tool


def test_upscaling_stage_is_the_decoders_whole_map(mobile_sam):
    """The ``upscaling`` stage gives, bit for bit, the first prompt's whole-map low-res logits
    that the decoder computes for it, and the ``transformer`` stage its tokens."""
    tool = load_tool("bench_compile")
    image = read_photo("dog.jpg")
    gen = MaskGenerator(mobile_sam)
    with torch.inference_mode():
        calls = tool.stage_calls(mobile_sam, image, gen)
        fn, args = calls["upscaling"]
        got = fn(*args).clone()
        tfn, targs = calls["transformer"]
        tokens, img = tfn(*targs)
        emb = mobile_sam.encode_image(image, torch.float32)
        ay, ax = mobile_sam.low_res_to_image(emb)
        dec = mobile_sam.point_decoder(emb, torch.float32, RegionUpscaler.needed_low_res(ay, ax),
                                       **gen.decoder_options)
        gd, ctx = dec.decoder, dec.ctx
        h, w = image.shape[:2]
        pts = torch.from_numpy(gen.point_grids[0][:dec.chunk_size] * [[w, h]])
        want_tokens, want_img = gd.run_transformer(ctx, dec.sparse_fn(pts), dec.final_tokens,
                                                   dec.token_counts)
        want = gd.predict_mask_logits(want_tokens[:1], want_img[:1], ctx.grid_hw, [1, 2, 3],
                                      dec.token_hw, ctx)[0]
    assert got.shape == (3, *dec.low_res_hw)
    assert torch.equal(got, want)
    assert torch.equal(tokens.nan_to_num(), want_tokens.nan_to_num())
    assert torch.equal(img.materialize(), want_img.materialize())


def test_compiled_upscaling_row(capsys):
    """One compiled stage end to end: a table row whose compiled output is within 1e-3 of the
    eager logits (the largest difference measured is 3.8e-5)."""
    tool = load_tool("bench_compile")
    code = tool.main([str(shared_path("images", "dog.jpg")), "--stages", "upscaling",
                      "--repeats", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    row = [line for line in out.splitlines() if line.startswith("| upscaling |")]
    assert len(row) == 1
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert float(cells[1]) > 0 and float(cells[2]) > 0 and float(cells[3]) > 0
    assert float(cells[5]) < 1e-3


def test_argument_errors(tmp_path, capsys):
    tool = load_tool("bench_compile")
    photo = str(shared_path("images", "dog.jpg"))
    assert tool.main([photo, "--stages", "upscaling,decoder"]) == 2
    assert "unknown stage 'decoder'" in capsys.readouterr().err
    assert tool.main([photo, "--repeats", "0"]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    assert tool.main([str(bad)]) == 2
    assert re.search(r"broken\.jpg", capsys.readouterr().err)
