"""Mask decoding of many prompts on one image with the image tokens kept in factored form: an
exact algebraic rewrite of :class:`~sam_model.mask_decoder.MaskDecoder` that never forms the
per-prompt (4096 x 256) image tokens.

Why it is exact. In every two-way block the image tokens change only through the
image->tokens attention: each image token ``n`` adds ``sum_(h,t) P[n, h, t] U[h, t]`` where
``P`` (softmax over the prompt's Nt ~ 7 tokens, per head) has R = heads * Nt = 56 columns and
``U[h, t] = W_o,h v_(h,t) + b_o / heads`` are 56 rows of width C = 256. A LayerNorm then
rescales each token. So after any number of blocks the image tokens of one prompt are

    X[n] = a[n] * B[n] + Q[n] @ M                                              (*)

with a shared (per image) base ``B`` (HW, C), a per-prompt row scale ``a`` (HW,), per-prompt
coefficients ``Q`` (HW, r) and per-prompt rows ``M`` (r, C). Each head's probabilities sum
to 1, so an update is stored as ``sum_h U[h, last] + sum_(h, t < last) P[h, t] (U[h, t] -
U[h, last])``: heads * (Nt - 1) = 48 columns plus one constant row, then one row for the
LayerNorm bias, padded to a multiple of 4 (r = 52 after the first block, 104 after the second;
stored transposed, (r, HW)). Everything the decoder does with image tokens is either linear in them
or needs their LayerNorm statistics, and both are cheap in form (*):

- a linear map ``W`` (attention projections, the first output-upscaling transposed
  convolution): ``X W^T = a * (B W^T) + Q (M W^T)`` — ``B W^T`` is computed once per image
  (:meth:`FactoredGridDecoder.prepare`), the rest is (HW x r) x (r x out) per prompt, or less
  when only a few query vectors are contracted with it (attention logits).
- LayerNorm: with ``Bc`` = B minus its row means and ``Mc`` = M minus its row means,
  ``C var[n] = a^2 |Bc[n]|^2 + 2 a Q[n] . (Bc M^T)[n] + Q[n] (Mc Mc^T) Q[n]^T``.
  ``Bc M^T`` would be a full (HW x C x r) product, but every row of ``M`` is an out-projection
  ``W_o,h v`` (plus bias), right-multiplied by the earlier LayerNorms' centring and gains, so
  ``Bc M^T = (Bc T^T W_o,h^T) v`` — a per-image (HW, 128) matrix contracted with each head's
  16-d values. The normalised tokens are again of form (*): ``a <- a D``, ``Q <- D Q``,
  ``M <- Mc * gamma`` plus one row ``beta`` with coefficient 1.

The first block needs no form (*): its image tokens are the shared embedding, so the
tokens->image keys/values and the image->tokens queries are projected once per image, and the
image->tokens attention's value and output projections fold into one (heads * Nt, C) matrix
per prompt (``sum_t p_t W_o v_t``). Per prompt (MobileSAM, 7 tokens) this is about 0.15 GMAC,
and the per-prompt arrays are (HW x r), r <= 104, instead of (HW x 256). The LayerNorm variance is a sum of non-negative and cross
terms evaluated in float32; the tests hold it to the plain decoder within 1e-4 on real
weights and photos.

Reference semantics: ``MaskDecoder.forward`` with ``multimask_output`` over single-point
prompts and the "no mask" dense embedding. The same rewrite serves the SAM-like decoders of
the other families: SAM 2's (:class:`~sam_model.sam2_mask_decoder.Sam2MaskDecoder`: the same
two-way transformer and upscaling, an object-score token ahead of the IoU token, and
high-resolution skip features added after each transposed convolution, which are per-image
biases of the upscaling here: :meth:`FactoredGridDecoder.prepare` with ``high_res_features``),
HQ-SAM's (one more output token, the HQ token; :mod:`sam_model.factored_hq_decoder` adds the
HQ mask) and EfficientSAM's (no dense prompt; its blocks' token self-attention,
``token_self_attention``; and ``GroupNorm(1, C)`` in the output upscaling, whose statistics
over the whole map are taken from the first transposed convolution of every token,
:meth:`FactoredGridDecoder.norm_stats`). Every decoder gives its output tokens by
``output_tokens()``.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.profiler import record_function

from .mask_decoder import MaskDecoder
from .point_decoder import DecodedMasks, RejectWindow
from .two_way_transformer import DecoderAttention


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., heads * d) -> (..., heads, d)."""
    return x.unflatten(-1, (heads, x.shape[-1] // heads))


# Buffer sizes kept per workspace name (see FactoredGridDecoder._workspace): a whole tile of
# the output upscaling, the last (partial) tiles of the full-image crop and of the crop-layer
# crops, and a whole map (EfficientSAM's GroupNorm statistics).
WORKSPACE_SIZES = 4

# Tokens of one prompt's map taken through the output upscaling at a time on a CPU
# (FactoredGridDecoder._logits_from_conv1): a tile's intermediates (first convolution 1 MB,
# normalised 1 MB, second convolution 2 MB in float32) stay in a core's L2 or nearby from one
# step to the next instead of making a round trip to memory per step for the whole map, in
# few enough operations that their dispatch costs little. Measured with one thread, float32,
# interleaved runs: on a 2-core AMD EPYC (AVX2, 1 MB L2 per core) tiles of 512 and 1024
# tokens were the fastest, 256 and 2048 slower; on a 2-core Intel Xeon (AVX-512, 2 MB L2 per
# core) 1024 took the whole-map logits 9% below 512 (EfficientSAM, groceries.jpg) and 7%
# (MobileSAM, dog.jpg). On other devices the whole map is one tile
# (FactoredGridDecoder.upscale_tile_tokens).
UPSCALE_TILE_TOKENS = 1024


@dataclass
class _NormShared:
    """Per-image terms of one block's final LayerNorm (norm4) on form (*).

    Attributes:
        sq: (HW,) ``|Bc[n]|^2`` of the base before this norm.
        cross: one entry per row group of ``M`` in row order: for an out-projection group
            ``("block", ct)`` with ``ct`` (heads, d + 1, HW) = ``[Bc T^T W_o,h^T, Bc T^T b_o/heads]^T``;
            for a bias row ``("bias", cv)`` with ``cv`` (HW,) = ``Bc . row``.
        norm: the LayerNorm module (weight, bias, eps).
    """

    sq: torch.Tensor
    cross: list
    norm: torch.nn.LayerNorm


@dataclass
class _AttentionShared:
    """Per-image projections of the base for one attention over image tokens of form (*).

    Attributes (all (heads, d, HW) float32, except ``v_base`` (heads, HW, d)):
        k_base / k_pe: ``B W_k^T`` and ``pe W_k^T`` (tokens->image keys).
        v_base: ``B W_v^T`` (tokens->image values).
        q_base / q_pe: ``B W_q^T`` and ``pe W_q^T`` (image->tokens queries; None for the final
            attention, which has no image->tokens side).
    """

    k_base: torch.Tensor
    k_pe: torch.Tensor
    v_base: torch.Tensor
    q_base: torch.Tensor | None
    q_pe: torch.Tensor | None


@dataclass
class FactoredContext:
    """Per-image tensors shared by every prompt batch (from :meth:`FactoredGridDecoder.prepare`).

    Attributes:
        keys0: (HW, C) image embedding plus dense prompt, channels-last.
        pe: (HW, C) positional encoding of the grid.
        k0: (heads, HW, d) first block tokens->image keys, per head.
        v0: (heads, HW, d) first block tokens->image values, per head.
        q0: (heads, d, HW) first block image->tokens queries, per head (transposed: the
            right-hand operand of the logits' product).
        grid_hw: (h, w) of the embedding grid.
        norms: one :class:`_NormShared` per two-way block.
        attns: ``attns[j]``: projections for the attention over the tokens after block j
            (block j+1's two attentions, or the final tokens->image attention).
        base: (HW, C) the base ``B`` of the transformer's output image tokens.
        conv1_base: (HW, 4 * C/4) ``B`` times the first upscaling transposed convolution's
            per-token matrix (no bias).
        bias1: None (the first transposed convolution's bias alone), or (HW, 4 * C/4) that bias
            plus the stride-8 skip feature (SAM 2's ``conv_s1`` output) of each token's 2 x 2
            outputs, in ``conv1_base``'s column order (sub-pixel (i, j), channel).
        bias2: None, or (4 * HW, 4 * C/8) the second transposed convolution's bias plus the
            stride-4 skip feature (``conv_s0``) per (token, i, j) row and (k, l, channel)
            column: the order of the second convolution's products.
    """

    keys0: torch.Tensor
    pe: torch.Tensor
    k0: torch.Tensor
    v0: torch.Tensor
    q0: torch.Tensor
    grid_hw: tuple[int, int]
    norms: list = None
    attns: list = None
    base: torch.Tensor = None
    conv1_base: torch.Tensor = None
    bias1: torch.Tensor | None = None
    bias2: torch.Tensor | None = None


@dataclass
class FactoredImageTokens:
    """Per-prompt image tokens in form (*):
    ``X[b, n] = scale[b, n] * base[n] + coef[b, :, n] @ rows[b]``.

    Attributes:
        scale: (B, HW). coef: (B, r, HW) (coefficients stored transposed, so that image
            tokens are the contiguous dimension). rows: (B, r, C).
        base: (HW, C), shared by the batch.
        All in the decoder's dtype (float32, or bfloat16 for ``compute_dtype`` bfloat16).
    """

    scale: torch.Tensor
    coef: torch.Tensor
    rows: torch.Tensor
    base: torch.Tensor

    def __len__(self) -> int:
        return self.scale.shape[0]

    def __getitem__(self, index) -> "FactoredImageTokens":
        """Prompts ``index`` (an index tensor, slice or list) of the batch."""
        return FactoredImageTokens(self.scale[index], self.coef[index], self.rows[index], self.base)

    def materialize(self) -> torch.Tensor:
        """The image tokens as a dense (B, HW, C) float32 tensor (for tests and callers that
        need them; the decoder itself never forms them)."""
        return torch.baddbmm(self.scale[..., None] * self.base, self.coef.transpose(1, 2), self.rows)


def _after_bias(offset: int) -> int:
    """Row layout of form (*): a LayerNorm bias row at ``offset`` is followed by zero rows up
    to the next multiple of 4. On a 2-core AVX2 host, products with r a multiple of 8 ran
    ~1.5x faster than with r = 113 (4.2 vs 6.5 ms for (113 x 113) @ (113 x 4096) batches of 4);
    on a 2-core AVX-512 host the time is proportional to r (10.3 us per MMAC for r = 100, 104,
    112, 113) and widths 52 / 104 instead of 56 / 112 made the float32 transformer and mask
    logits ~3% faster (interleaved runs, picture1.jpg). Multiples of 4 keep the rows aligned
    for both."""
    return -(-(offset + 1) // 4) * 4


def _centre(x: torch.Tensor) -> torch.Tensor:
    """Subtract the mean over the last dimension."""
    return x - x.mean(-1, keepdim=True)


def _quadratic_form(gram: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``Q[n] G Q[n]^T`` for every image token: (B, r, r) symmetric ``gram`` and (B, r, HW)
    ``coef`` -> (B, HW).

    With the rows split in two, ``q = c1 (G11 c1 + 2 G12 c2) + c2 G22 c2``: the lower-left
    block of G is not multiplied: 3/4 of the arithmetic of ``(G c) . c``. Measured on a
    2-core CPU in float32 (picture1.jpg, 64 prompts in chunks of 4, 8 interleaved runs): the
    two-way transformer's median 4.64 vs 4.86 ms per prompt. In bfloat16 (where the halves
    of ``coef`` would be copied first) and below 32 rows: the plain form.
    """
    r = coef.shape[1]
    s = (r // 2) // 4 * 4
    if s < 16 or coef.dtype != torch.float32:
        return (torch.bmm(gram, coef) * coef).sum(1)
    top = torch.cat([gram[:, :s, :s], 2 * gram[:, :s, s:]], 2)  # (B, s, r)
    y = torch.bmm(top, coef)
    y.mul_(coef[:, :s])
    quad = y.sum(1)
    y2 = torch.bmm(gram[:, s:, s:].contiguous(), coef[:, s:])
    y2.mul_(coef[:, s:])
    return quad.add_(y2.sum(1))


# Token windows up to this size (the generator's crop-edge strips) are decoded for all prompts
# in one pass; whole maps prompt by prompt, whose intermediates then stay in cache.
BATCHED_WINDOW_TOKENS = 512


class FactoredGridDecoder:
    """Exact decoding of prompt batches on one image with image tokens in form (*) (see the
    module docstring): :meth:`prepare` once per image, then per prompt batch
    :meth:`run_transformer` (image tokens as :class:`FactoredImageTokens`),
    :meth:`predict_iou`, :meth:`mask_inputs` and :meth:`predict_mask_logits`.

    Args:
        decoder: the model's :class:`MaskDecoder` (weights are read, not copied, in float32),
            or a decoder of the same design: SAM 2's
            :class:`~sam_model.sam2_mask_decoder.Sam2MaskDecoder`, HQ-SAM's
            :class:`~sam_model.hq_mask_decoder.HQMaskDecoder`, EfficientSAM's
            :class:`~sam_model.efficient_sam_mask_decoder.EfficientSamMaskDecoder`.
        dtype: arithmetic of the per-prompt work. ``torch.float32`` (default) is the exact
            rewrite. ``torch.bfloat16`` is an approximation for fast presets (not the
            reference's numbers): the per-image terms are computed in float32 by
            :meth:`prepare` and then rounded to bfloat16, the per-prompt products, softmaxes
            and output upscaling run in bfloat16 on a bfloat16 copy of the decoder's weights,
            and the LayerNorm variances are summed in float32. On a CPU with AVX512-BF16
            matrix products run ~3.5-5x faster than in float32 (docs/benchmarks.md); on one
            without it bfloat16 is slower. :meth:`predict_iou` and :meth:`predict_mask_logits`
            return float32 either way.

    Raises:
        ValueError: the two-way transformer has no block, the output upscaling is not two
            transposed convolutions, or ``dtype`` is neither float32 nor bfloat16.
    """

    def __init__(self, decoder: MaskDecoder, dtype: torch.dtype = torch.float32) -> None:
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"FactoredGridDecoder: dtype must be torch.float32 or "
                             f"torch.bfloat16, got {dtype!r}")
        self.dtype = dtype
        # The per-image terms are always made in float32 (by this float32 twin) and rounded.
        self._float32 = None if dtype == torch.float32 else FactoredGridDecoder(decoder)
        decoder = decoder if dtype == torch.float32 else copy.deepcopy(decoder).to(dtype)
        t = decoder.transformer
        if len(t.layers) < 1:
            raise ValueError("FactoredGridDecoder needs a two-way transformer with at least one block")
        self.dec = decoder
        self._orders: dict[tuple[int, int, str], torch.Tensor] = {}
        self._local = threading.local()  # per thread: its workspaces (see _workspace)
        self.heads = t.final_attn_token_to_image.num_heads
        if hasattr(decoder, "output_upscaling"):  # SAM, HQ-SAM: ConvT, LayerNorm2d, GELU, ConvT, GELU
            up = decoder.output_upscaling
            ct1, ln, ct2 = up[0], up[1], up[3]
        else:  # EfficientSAM: [ConvT, GroupNorm(1, C), GELU], [ConvT, Identity, GELU]
            stages = decoder.final_output_upscaling_layers
            if len(stages) != 2:
                raise ValueError(f"FactoredGridDecoder needs two upscaling stages, got {len(stages)}")
            ct1, ln, ct2 = stages[0][0], stages[0][1], stages[1][0]
        # GroupNorm(1, C): statistics over the whole map (norm_stats); LayerNorm2d: per pixel.
        self.group_norm = isinstance(ln, nn.GroupNorm)
        c1, c2 = ct1.out_channels, ct2.out_channels
        # (in, out, i, j) -> (in, [i, j, out]): output sub-pixel (i, j) outer, channel inner.
        self.w1 = ct1.weight.permute(0, 2, 3, 1).reshape(ct1.in_channels, 4 * c1).contiguous()
        self.b1 = ct1.bias.repeat(4)
        self.w2 = ct2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2).contiguous()
        self.b2 = ct2.bias.repeat(4)
        self.ln_w, self.ln_b, self.ln_eps = ln.weight, ln.bias, ln.eps
        self.c1, self.c2 = c1, c2

    # ------------------------------------------------------------------ per image
    def prepare(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                dense: torch.Tensor,
                high_res_features: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> FactoredContext:
        """Shared image-side work: the first block's projections (tokens->image
        keys/values, image->tokens queries) and, for every LayerNorm and later attention,
        the base terms of form (*).

        Args:
            image_embedding: (1, C, h, w) float32. image_pe: (1, C, h, w). dense: (1, C, h, w)
                (the broadcast "no mask" embedding).
            high_res_features: SAM 2's skip features ``(feat_s0 (1, C/8, 4h, 4w), feat_s1
                (1, C/4, 2h, 2w))`` float32, added inside the output upscaling
                (:meth:`Sam2MaskDecoder.upscale`); None for SAM's decoder.

        Returns:
            a :class:`FactoredContext` (about 1.3 GMAC and 20 MB for a 64x64 grid), its
            tensors in this decoder's ``dtype`` (computed in float32, then rounded).
        """
        if self._float32 is not None:
            return self._cast_context(self._float32.prepare(image_embedding, image_pe, dense,
                                                            high_res_features))
        keys0 = (image_embedding + dense)[0].flatten(1).T.contiguous()  # (HW, C)
        pe = image_pe[0].flatten(1).T.contiguous()
        x0 = keys0 + pe
        block = self.dec.transformer.layers[0]
        h = self.heads
        k0 = _heads(block.cross_attn_token_to_image.k_proj(x0), h).transpose(0, 1).contiguous()
        v0 = _heads(block.cross_attn_token_to_image.v_proj(keys0), h).transpose(0, 1).contiguous()
        q0 = _heads(block.cross_attn_image_to_token.q_proj(x0), h).permute(1, 2, 0).contiguous()
        ctx = FactoredContext(keys0, pe, k0, v0, q0, tuple(image_embedding.shape[-2:]))
        t = self.dec.transformer
        h = self.heads
        pe = ctx.pe
        base = ctx.keys0
        groups: list[list] = []  # row groups of M in order: ["block", Wt (hd, C), bt (C)] / ["bias", row]
        norms, attns = [], []
        for j, blk in enumerate(t.layers):
            o = blk.cross_attn_image_to_token.out_proj
            groups.append(["block", o.weight.T, o.bias / h])
            bc = _centre(base)
            cross = []
            for g in groups:
                if g[0] == "block":
                    ct = (g[1] @ bc.T).unflatten(0, (h, -1))  # (h, d, HW)
                    cb = (bc @ g[2])[None, None].expand(h, 1, -1)
                    cross.append(("block", torch.cat([ct, cb], 1).contiguous()))
                else:
                    cross.append(("bias", bc @ g[1]))
            norm = blk.norm4
            norms.append(_NormShared(bc.square().sum(1), cross, norm))
            gain = norm.weight
            groups = [[g[0], *(_centre(x) * gain for x in g[1:])] for g in groups]
            groups.append(["bias", norm.bias])
            base = bc * gain
            last = j + 1 == len(t.layers)
            a2i = t.final_attn_token_to_image if last else t.layers[j + 1].cross_attn_token_to_image

            def proj(lin: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
                return (lin.weight @ x.T).unflatten(0, (h, -1)).contiguous()  # (h, d, HW)

            v_base = proj(a2i.v_proj, base).transpose(1, 2).contiguous()
            if last:
                attns.append(_AttentionShared(proj(a2i.k_proj, base), proj(a2i.k_proj, pe),
                                              v_base, None, None))
            else:
                i2t = t.layers[j + 1].cross_attn_image_to_token
                attns.append(_AttentionShared(proj(a2i.k_proj, base), proj(a2i.k_proj, pe),
                                              v_base, proj(i2t.q_proj, base),
                                              proj(i2t.q_proj, pe)))
        bias1 = bias2 = None
        if high_res_features is not None:
            bias1, bias2 = self._skip_biases(high_res_features, ctx.grid_hw)
        return FactoredContext(ctx.keys0, ctx.pe, ctx.k0, ctx.v0, ctx.q0, ctx.grid_hw,
                               norms=norms, attns=attns, base=base,
                               conv1_base=(base @ self.w1).contiguous(), bias1=bias1, bias2=bias2)

    def _skip_biases(self, high_res_features: tuple[torch.Tensor, torch.Tensor],
                     grid_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """:attr:`FactoredContext.bias1` / ``bias2`` from SAM 2's skip features.

        The first transposed convolution (kernel = stride = 2) writes token (y, x)'s output
        (i, j) to pixel (2y + i, 2x + j) of the stride-8 map, the second writes row (y, x, i, j)'s
        output (k, l) to pixel (4y + 2i + k, 4x + 2j + l) of the stride-4 map; each skip
        feature is added there (``up = GELU(LN(dc1(x) + s1)); GELU(dc2(up) + s0)``).
        """
        feat_s0, feat_s1 = high_res_features
        h, w = grid_hw
        c1, c2 = self.c1, self.c2
        if feat_s1.shape != (1, c1, 2 * h, 2 * w) or feat_s0.shape != (1, c2, 4 * h, 4 * w):
            raise ValueError(f"high_res_features must be (1, {c2}, {4 * h}, {4 * w}) and "
                             f"(1, {c1}, {2 * h}, {2 * w}), got {tuple(feat_s0.shape)} and "
                             f"{tuple(feat_s1.shape)}")
        s1 = feat_s1[0].view(c1, h, 2, w, 2).permute(1, 3, 2, 4, 0).reshape(h * w, 4 * c1)
        s0 = feat_s0[0].view(c2, h, 2, 2, w, 2, 2).permute(1, 4, 2, 5, 3, 6, 0)
        return ((s1 + self.b1).contiguous(),
                (s0.reshape(4 * h * w, 4 * c2) + self.b2).contiguous())

    def _upscaling_biases(self, ctx: FactoredContext, token_box: tuple[int, int, int, int]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """The biases of the two transposed convolutions for the tokens of ``token_box``:
        ``(b1 (4*c1,), b2 (4*c2,))`` without skip features, else the window's rows of
        ``ctx.bias1`` (n, 4*c1) and ``ctx.bias2`` (4n, 4*c2), n its tokens (row-major)."""
        if ctx.bias1 is None:
            return self.b1, self.b2
        gh, gw = ctx.grid_hw
        y0, y1, x0, x1 = token_box
        n = (y1 - y0) * (x1 - x0)
        b1 = ctx.bias1.view(gh, gw, -1)[y0:y1, x0:x1].reshape(n, -1)
        b2 = ctx.bias2.view(gh, gw, 4, -1)[y0:y1, x0:x1].reshape(4 * n, -1)
        return b1, b2

    def _cast_context(self, ctx: FactoredContext) -> FactoredContext:
        """A float32 context rounded to ``self.dtype``, its LayerNorms this decoder's copies."""
        dt = self.dtype
        norms = [_NormShared(ns.sq.to(dt), [(kind, term.to(dt)) for kind, term in ns.cross],
                             blk.norm4)
                 for ns, blk in zip(ctx.norms, self.dec.transformer.layers)]
        attns = [_AttentionShared(*(None if x is None else x.to(dt) for x in
                                    (a.k_base, a.k_pe, a.v_base, a.q_base, a.q_pe)))
                 for a in ctx.attns]
        return FactoredContext(ctx.keys0.to(dt), ctx.pe.to(dt), ctx.k0.to(dt), ctx.v0.to(dt),
                               ctx.q0.to(dt), ctx.grid_hw, norms=norms, attns=attns,
                               base=ctx.base.to(dt), conv1_base=ctx.conv1_base.to(dt),
                               bias1=None if ctx.bias1 is None else ctx.bias1.to(dt),
                               bias2=None if ctx.bias2 is None else ctx.bias2.to(dt))

    # ------------------------------------------------------------------ form (*) steps
    def _layer_norm(self, ns: _NormShared, scale: torch.Tensor | None, coef: torch.Tensor,
                    rows: torch.Tensor, values: list[torch.Tensor]) -> torch.Tensor:
        """LayerNorm of tokens in form (*), in place on ``coef``/``rows``; returns the new scale.

        Args:
            ns: the norm's per-image terms. scale: (B, HW) or None (= 1).
            coef: (B, r, HW) coefficients (a view into the caller's buffer).
            rows: (B, r, C) rows (a view).
            values: per out-projection group, the per-head values (B, Nt, h, d).

        Returns:
            the new scale (B, HW) float32; ``coef``/``rows`` hold ``D Q`` and ``Mc * gamma``.
        """
        b, r, hw = coef.shape
        c = rows.shape[-1]
        # cross = sum over rows of coef * (Bc . row)
        cross = coef.new_zeros(b, hw)
        off, vi = 0, 0
        for kind, term in ns.cross:
            if kind == "block":
                v = values[vi]
                vi += 1
                _, nt, h, d = v.shape
                v1 = torch.cat([v, v.new_ones(b, nt, h, 1)], -1)  # (B, Nt, h, d+1)
                prod = self._scores(v1.permute(2, 0, 1, 3).reshape(h, b * nt, d + 1), term)
                prod = prod.view(h, b, nt, hw).transpose(0, 1)  # (B, h, Nt, HW): Bc . U[h, t]
                # rows U[h, t] - U[h, last] (t < last), then the group's row sum_h U[h, last]
                k = h * (nt - 1)
                last = prod[:, :, nt - 1:]
                diff = torch.sub(prod[:, :, :nt - 1], last,
                                 out=self._workspace("diff", b * h, (nt - 1) * hw, coef).view(b, h, nt - 1, hw))
                cross += diff.mul_(coef[:, off:off + k].view(b, h, nt - 1, hw)).sum((1, 2))
                cross.addcmul_(coef[:, off + k], last.sum((1, 2)))
                off += k + 1
            else:
                cross.addcmul_(coef[:, off], term)
                off = _after_bias(off)
        mc = _centre(rows)
        quad = _quadratic_form(torch.bmm(mc, mc.transpose(1, 2)), coef)  # (B, HW)
        if coef.dtype != torch.float32:  # sum the variance's terms in float32
            cross, quad = cross.float(), quad.float()
            scale = None if scale is None else scale.float()
        sq = ns.sq.float()
        if scale is None:
            var = sq + 2 * cross + quad
        else:
            var = scale.square() * sq + 2 * scale * cross + quad
        inv = torch.rsqrt(var / c + ns.norm.eps)  # (B, HW) float32
        coef.mul_(inv.to(coef.dtype)[:, None])
        rows.copy_(mc * ns.norm.weight)
        return (inv if scale is None else inv * scale).to(coef.dtype)

    def _token_to_image(self, attn: DecoderAttention, sh: _AttentionShared, q_in: torch.Tensor,
                        scale: torch.Tensor, coef: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Tokens (B, m, C) attend to image tokens in form (*): the attention output (B, m, C).

        Logits ``q_h . (W_k,h (x + pe) + b_k,h)`` per head: ``a (B W_k^T) q + (pe W_k^T) q +
        Q (M W_k^T q)`` (``q . b_k`` is constant over the image tokens and drops out of the
        softmax); values ``W_v,h sum_n p_n x_n + b_v,h`` with ``sum_n p_n x_n = (p a) B + (p Q) M``.
        """
        b, m, _ = q_in.shape
        hw = coef.shape[2]
        h = self.heads
        q = _heads(attn.q_proj(q_in), h)  # (B, m, h, d)
        d = q.shape[-1]
        q = q * d ** -0.5
        qh = q.permute(2, 0, 1, 3).reshape(h, b * m, d)  # (h, B*m, d)
        wk = attn.k_proj.weight.unflatten(0, (h, d))  # (h, d, C)
        w = torch.einsum("bmhd,hdc->bhmc", q, wk).reshape(b, h * m, -1)  # (B, h*m, C)
        rw = torch.bmm(w, rows.transpose(1, 2))  # (B, h*m, r)
        logits = torch.bmm(rw, coef).view(b, h, m, hw)
        s_base = self._scores(qh, sh.k_base).view(h, b, m, hw).transpose(0, 1)
        logits.addcmul_(s_base, scale.view(b, 1, 1, hw))
        logits += self._scores(qh, sh.k_pe).view(h, b, m, hw).transpose(0, 1)
        p = torch.ops.aten._softmax.out(logits, -1, False, out=logits)  # (B, h, m, HW), in place
        # p * a written head-major in the same pass (the bmm below batches over heads)
        pa = torch.mul(p.transpose(0, 1), scale.view(1, b, 1, hw),
                       out=p.new_empty(h, b, m, hw)).view(h, b * m, hw)
        v_base = torch.bmm(pa, sh.v_base).view(h, b, m, d).permute(1, 2, 0, 3)  # (B, m, h, d)
        # p Q^T as (Q p^T)^T: with both operands' long dimension (HW) contiguous, the product
        # of the final attention's (B, 32, HW) p and (B, 104, HW) coefficients took 1.0 ms
        # against 1.8 ms the other way round (one thread, AVX-512), with the same values
        pq = torch.bmm(coef, p.view(b, h * m, hw).transpose(1, 2)).transpose(1, 2)
        pooled = torch.bmm(pq, rows)
        wv = attn.v_proj.weight.unflatten(0, (h, d))
        v_rows = torch.einsum("bhmc,hdc->bmhd", pooled.view(b, h, m, -1), wv)
        out = (v_base + v_rows).reshape(b, m, h * d) + attn.v_proj.bias
        return attn.out_proj(out)

    def _image_to_token_probs(self, attn: DecoderAttention, sh: _AttentionShared,
                              tokens_pe: torch.Tensor, tokens: torch.Tensor, scale: torch.Tensor,
                              coef: torch.Tensor, rows: torch.Tensor,
                              key_bias: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image->tokens attention with image queries in form (*); ``key_bias`` (Nt,) is
        added to each token's logits (``log(count)``, see :meth:`run_transformer`).

        Returns:
            probabilities (B, h*Nt, HW) (softmax over each head's Nt tokens), the per-head
            values (B, Nt, h, d) and the folded rows ``W_o,h v + b_o/h`` (B, h*Nt, C).
        """
        b, nt, _ = tokens_pe.shape
        hw = coef.shape[2]
        h = self.heads
        k = _heads(attn.k_proj(tokens_pe), h)  # (B, Nt, h, d)
        d = k.shape[-1]
        k = k * d ** -0.5
        kh = k.permute(2, 0, 1, 3).reshape(h, b * nt, d)
        wq = attn.q_proj.weight.unflatten(0, (h, d))
        kq = torch.einsum("bthd,hdc->bhtc", k, wq).reshape(b, h * nt, -1)  # (B, h*Nt, C)
        const = torch.einsum("bthd,hd->bht", k, attn.q_proj.bias.unflatten(0, (h, d)))
        logits = torch.bmm(torch.bmm(kq, rows.transpose(1, 2)), coef).view(b, h, nt, hw)
        s_base = self._scores(kh, sh.q_base).view(h, b, nt, hw).transpose(0, 1)
        logits.addcmul_(s_base, scale.view(b, 1, 1, hw))
        logits += self._scores(kh, sh.q_pe).view(h, b, nt, hw).transpose(0, 1)
        logits += const[..., None]
        if key_bias is not None:
            logits += key_bias[:, None]
        v = _heads(attn.v_proj(tokens), h)
        return logits.softmax(2).view(b, h * nt, hw), v, self._fold_values(attn, v)

    def _scores(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``torch.bmm(x, y)`` (h, n, k) x (h, k, HW) -> (h, n, HW) into a reused buffer (see
        :meth:`_workspace`): valid until the next call; each per-head product of the
        per-image terms is read once, by the next operation."""
        h, n, _ = x.shape
        out = self._workspace("scores", h * n, y.shape[2], x).view(h, n, y.shape[2])
        return torch.bmm(x, y, out=out)

    @staticmethod
    def _update_rows(p: torch.Tensor, m: torch.Tensor, coef: torch.Tensor, rows: torch.Tensor) -> None:
        """Write an image->tokens update ``sum_(h,t) p[h, t] U[h, t]`` into form (*) columns.

        Each head's probabilities sum to 1 over the Nt tokens, so the update equals
        ``sum_h U[h, last] + sum_(h, t < last) p[h, t] (U[h, t] - U[h, last])``: h*(Nt-1) columns
        plus one row with coefficient 1, instead of h*Nt columns (48 + 1 instead of 56 for a
        point prompt; every later product over the columns shrinks with it).

        Args:
            p: (B, h, Nt, HW) probabilities (softmax over Nt). m: (B, h*Nt, C) rows ``U``.
            coef: (B, h*(Nt-1) + 1, HW) output columns. rows: (B, h*(Nt-1) + 1, C) output rows.
        """
        b, h, nt, hw = p.shape
        k = h * (nt - 1)
        coef[:, :k].view(b, h, nt - 1, hw).copy_(p[:, :, :nt - 1])
        coef[:, k] = 1.0
        u = m.view(b, h, nt, -1)
        torch.sub(u[:, :, :nt - 1], u[:, :, nt - 1:], out=rows[:, :k].view(b, h, nt - 1, -1))
        rows[:, k] = u[:, :, nt - 1].sum(1)

    # ------------------------------------------------------------------ decoder
    def run_transformer(self, ctx: FactoredContext, sparse: torch.Tensor,
                        final_tokens: list[int] | None = None,
                        token_counts: Sequence[int] | None = None
                        ) -> tuple[torch.Tensor, FactoredImageTokens]:
        """Two-way transformer for a prompt batch with image tokens in form (*).

        Args:
            ctx: from :meth:`prepare`.
            sparse: (B, Np, C) float32 prompt tokens.
            final_tokens: output token positions the caller reads; the last attention is
                computed only for these, the other positions are NaN. Default: all.
            token_counts: optional Np positive ints: prompt token ``i`` stands for
                ``token_counts[i]`` identical prompt tokens of the decoder's real input
                (EfficientSAM pads every point prompt with five identical invalid points).
                Identical tokens stay identical through every step (each step treats a token
                by its own value, or attends over the image), so they are decoded once, and
                wherever the tokens are the keys of an attention (token self-attention,
                image->tokens) each one's logit gets ``log(count)``: its softmax weight is
                then the sum of its copies' weights. Exact up to float rounding.

        Returns:
            tokens (B, T + Np, C) (T output tokens, ``decoder.output_tokens()``: 5 in SAM, 6 in
            SAM 2 and HQ-SAM) and the output image tokens as :class:`FactoredImageTokens`
            (``.materialize()`` gives ``MaskDecoder``'s (B, HW, C)), both in ``self.dtype``.
        """
        dec = self.dec
        t = dec.transformer
        sparse = sparse.to(self.dtype)
        b = sparse.shape[0]
        h = self.heads
        out_tokens = dec.output_tokens()
        pe_tok = torch.cat([out_tokens[None].expand(b, -1, -1), sparse], 1)
        nt = pe_tok.shape[1]
        key_bias = None  # (Nt,) log multiplicity of each token as an attention key
        if token_counts is not None:
            counts = torch.as_tensor(list(token_counts), dtype=torch.float64)
            if counts.shape != (sparse.shape[1],) or bool((counts < 1).any()):
                raise ValueError(f"token_counts must be {sparse.shape[1]} counts >= 1, "
                                 f"got {list(token_counts)}")
            if bool((counts > 1).any()):
                key_bias = torch.cat([torch.zeros(len(out_tokens), dtype=torch.float64),
                                      counts.log()]).to(self.dtype).to(sparse.device)
        hw, c = ctx.keys0.shape
        big_r = h * (nt - 1) + 1  # columns per image->tokens update (see _update_rows)

        widths = [_after_bias(big_r)]
        for _ in t.layers[1:]:
            widths.append(_after_bias(widths[-1] + big_r))
        if self.dtype == torch.float32:  # one buffer; column ranges of it are views
            full = (sparse.new_empty(b, widths[-1], hw), sparse.new_empty(b, widths[-1], c))

        def grow(coef: torch.Tensor | None, rows: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
            """(B, width, HW) / (B, width, C) buffers holding the old columns, room for one
            update and its LayerNorm bias row, the rest zero. In float32 these are column
            ranges of one buffer (strided over the batch, which float32 products take as
            they are); in bfloat16 new contiguous tensors, as bfloat16 batched products copy
            strided operands first (~0.9 vs 0.17 ms for a (4, 56, 4096) one)."""
            r0 = 0 if coef is None else coef.shape[1]
            width = _after_bias(r0 + big_r)  # = widths[block]
            if self.dtype == torch.float32:
                new_coef, new_rows = full[0][:, :width], full[1][:, :width]
            else:
                new_coef, new_rows = sparse.new_empty(b, width, hw), sparse.new_empty(b, width, c)
                if coef is not None:
                    new_coef[:, :r0] = coef
                    new_rows[:, :r0] = rows
            new_coef[:, r0 + big_r:] = 0.0  # [r0, r0 + big_r) is written by _update_rows
            new_rows[:, r0 + big_r:] = 0.0
            return new_coef, new_rows

        def self_attention(blk, queries):
            return blk.token_self_attention(queries, pe_tok, key_bias)

        # First block: the image tokens are the shared embedding (scale 1, no rows).
        blk = t.layers[0]
        queries = self_attention(blk, pe_tok)
        queries = blk.norm2(queries + self._tokens_to_shared_image(
            blk.cross_attn_token_to_image, queries + pe_tok, ctx))
        queries = blk.norm3(queries + blk.mlp(queries))
        attn = blk.cross_attn_image_to_token
        k = _heads(attn.k_proj(queries + pe_tok), h)
        v = _heads(attn.v_proj(queries), h)
        d = k.shape[-1]
        k = k * d ** -0.5  # on the 7 keys, not on the (h, B*Nt, HW) logits
        logits = torch.bmm(k.permute(2, 0, 1, 3).reshape(h, b * nt, d), ctx.q0)
        logits = logits.view(h, b, nt, hw)
        if key_bias is not None:
            logits += key_bias[:, None]
        p = logits.softmax(2)  # over the prompt's tokens
        coef, rows = grow(None, None)
        self._update_rows(p.transpose(0, 1), self._fold_values(attn, v),
                          coef[:, :big_r], rows[:, :big_r])
        values = [v]
        r = big_r  # used columns; the rest of the buffer is zero and adds nothing
        scale = None
        for j in range(len(t.layers)):
            scale = self._layer_norm(ctx.norms[j], scale, coef, rows, values)
            coef[:, r] = 1.0  # the LayerNorm bias, coefficient 1
            rows[:, r] = t.layers[j].norm4.bias
            r = coef.shape[1]
            sh = ctx.attns[j]
            if j + 1 < len(t.layers):
                blk = t.layers[j + 1]
                queries = self_attention(blk, queries)
                queries = blk.norm2(queries + self._token_to_image(
                    blk.cross_attn_token_to_image, sh, queries + pe_tok, scale, coef, rows))
                queries = blk.norm3(queries + blk.mlp(queries))
                p, v, m = self._image_to_token_probs(blk.cross_attn_image_to_token, sh,
                                                     queries + pe_tok, queries, scale, coef, rows,
                                                     key_bias)
                coef, rows = grow(coef, rows)
                self._update_rows(p.view(b, h, nt, hw), m, coef[:, r:r + big_r],
                                  rows[:, r:r + big_r])
                values.append(v)
                r += big_r
            else:
                sel = list(range(nt)) if final_tokens is None else list(final_tokens)
                out = self._token_to_image(t.final_attn_token_to_image, sh,
                                           queries[:, sel] + pe_tok[:, sel], scale, coef, rows)
                full = torch.full_like(queries, float("nan"))
                full[:, sel] = t.norm_final_attn(queries[:, sel] + out)
                queries = full
        return queries, FactoredImageTokens(scale, coef, rows, ctx.base)

    def predict_mask_logits(self, tokens: torch.Tensor, image_tokens: FactoredImageTokens,
                            grid_hw: tuple[int, int], mask_index: list[int],
                            token_hw: tuple[int, int] | None = None,
                            ctx: FactoredContext | None = None,
                            token_box: tuple[int, int, int, int] | None = None,
                            weights: torch.Tensor | None = None,
                            rows_w1: torch.Tensor | None = None,
                            norm_stats: torch.Tensor | None = None) -> torch.Tensor:
        """Low-resolution logits for the chosen mask tokens from factored image tokens.

        The first transposed convolution is linear per token, so on form (*) it is
        ``a * (B W1) + Q (M W1) + b1`` with ``B W1`` from :meth:`prepare`
        (``ctx.conv1_base``); then LayerNorm2d, GELU, the second transposed
        convolution, GELU and the hypernetwork dot products (:meth:`_logits_from_conv1`).

        Args:
            tokens: (B, Nt, C). image_tokens: :class:`FactoredImageTokens` of B prompts.
            grid_hw: (h, w). mask_index: mask tokens to decode.
            token_hw: decode only the top-left (th, tw) tokens. Default: all.
            ctx: the context the tokens came from (for ``conv1_base``).
            token_box: decode only tokens ``[y0, y1) x [x0, x1)`` (overrides ``token_hw``);
                every output pixel depends on one token only (both transposed convolutions
                have kernel = stride), so these are the logits of low-res pixels
                ``[4*y0, 4*y1) x [4*x0, 4*x1)`` of the full map.
            weights, rows_w1: :meth:`mask_inputs` of these tokens, when the caller decodes
                several windows of the same prompts (computed here when None). ``weights``
                may also be any (B, M, c2) hypernetwork weights (one chosen token per prompt).
            norm_stats: :meth:`norm_stats` of these tokens (GroupNorm upscaling only;
                computed here when None: for a whole map decoded prompt by prompt, from
                each prompt's first transposed convolution as it is made).

        Returns:
            (B, M, 4*th, 4*tw) float32 logits (computed in ``self.dtype``); th, tw the
            window's size.

        Raises:
            ValueError: ``ctx`` is missing, or ``token_box`` is not inside the grid.
        """
        if ctx is None:
            raise ValueError("FactoredGridDecoder.predict_mask_logits needs the image's ctx")
        gh, gw = grid_hw
        if token_box is None:
            th, tw = token_hw or grid_hw
            token_box = (0, th, 0, tw)
        y0, y1, x0, x1 = token_box
        if not (0 <= y0 < y1 <= gh and 0 <= x0 < x1 <= gw):
            raise ValueError(f"token_box {token_box} is not inside the {grid_hw} token grid")
        th, tw = y1 - y0, x1 - x0
        b = len(image_tokens)
        if weights is None or rows_w1 is None:
            weights, rows_w1 = self.mask_inputs(tokens, image_tokens, mask_index)
        per_prompt = th * tw > BATCHED_WINDOW_TOKENS
        # The whole map's statistics come with each prompt's own first convolution below.
        map_stats = self.group_norm and norm_stats is None and per_prompt and \
            token_box == (0, gh, 0, gw)
        if self.group_norm and norm_stats is None and not map_stats:
            norm_stats = self.norm_stats(image_tokens, ctx, rows_w1)
        m = weights.shape[1]
        r = image_tokens.coef.shape[1]
        out = torch.empty(b, m, 4 * th, 4 * tw, dtype=weights.dtype, device=weights.device)
        base = ctx.conv1_base.view(gh, gw, -1)[y0:y1, x0:x1].reshape(th * tw, -1)
        b1, b2 = self._upscaling_biases(ctx, token_box)
        if not per_prompt:
            return self._window_logits_batched(image_tokens, rows_w1, base, weights, token_box,
                                               grid_hw, b1, b2, norm_stats
                                               ).view(b, m, 4 * th, 4 * tw).float()
        n = th * tw
        for i in range(b):
            coef = image_tokens.coef[i].view(r, gh, gw)[:, y0:y1, x0:x1].reshape(r, n)
            a = image_tokens.scale[i].view(gh, gw)[y0:y1, x0:x1].reshape(n, 1)
            if map_stats:  # the whole map's statistics first, tile by tile
                rows, affine = self._group_norm_conv1(a, base, b1, coef, rows_w1[i])
                self._logits_from_conv1(rows, weights[i], th, tw, out[i], b2, tile_affine=affine)
            else:  # each tile of the first convolution made when the upscaling needs it
                stats = None if norm_stats is None else norm_stats[i]
                rows = partial(self._conv1_rows, a, base, b1, coef, rows_w1[i])
                self._logits_from_conv1(rows, weights[i], th, tw, out[i], b2, stats)
        return out.float()

    def _group_norm_conv1(self, a: torch.Tensor, base: torch.Tensor, b1: torch.Tensor,
                          coef: torch.Tensor, rows_w1: torch.Tensor
                          ) -> tuple[Callable[[int, int], torch.Tensor],
                                     Callable[[int], tuple[torch.Tensor, torch.Tensor]]]:
        """One prompt's whole first transposed convolution and its GroupNorm(1, C) statistics
        over every channel and pixel (EfficientSAM), made :meth:`upscale_tile_tokens` tokens
        at a time: each tile is centred on its own mean while it is in cache, and the tiles'
        means and sums of squared deviations combine exactly into the map's (Chan, Golub and
        LeVeque's pairwise update: ``M2 = sum M2_t + sum n_t (mean_t - mean)^2``).

        Args: as :meth:`_conv1_rows` (all n tokens).

        Returns:
            ``rows(s, e)``: the map's rows [s, e), each tile centred on its own mean, and
            ``affine(s)``: the GroupNorm and its affine for the tile starting at row ``s``
            as ``(bias, scale)``, both (c1,): ``y = bias + x * scale`` with ``scale = w /
            sqrt(var + eps)`` (biased variance, as ``nn.GroupNorm``) and ``bias = b +
            (mean_t - mean) * scale``, so that the tile's shift to the map's mean costs no
            pass over its values; all in the dtype of ``rows_w1``.
        """
        n = base.shape[0]
        tile = self.upscale_tile_tokens(n, rows_w1.device)
        f = self._workspace("f1", n, rows_w1.shape[1], rows_w1)
        counts, means, m2 = [], [], []
        for s in range(0, n, tile):
            e = min(s + tile, n)
            ft = self._conv1_rows(a, base, b1, coef, rows_w1, s, e, out=f[s:e])
            mean_t = ft.mean()
            ft.sub_(mean_t)
            flat = ft.view(-1) if ft.dtype == torch.float32 else ft.view(-1).float()
            counts.append(flat.numel())
            means.append(mean_t.float())
            m2.append(torch.dot(flat, flat))
        count = torch.tensor(counts, dtype=torch.float32, device=f.device)
        mean_t = torch.stack(means)
        mean = (count * mean_t).sum() / count.sum()
        var = (torch.stack(m2).sum() + (count * (mean_t - mean).square()).sum()) / count.sum()
        scale = self.ln_w * torch.rsqrt(var + self.ln_eps).to(f.dtype)  # (c1,)
        # per tile: the shift from its own mean to the map's, through the affine
        biases = torch.addcmul(self.ln_b, (mean_t - mean).to(f.dtype)[:, None], scale)

        def rows(s: int, e: int) -> torch.Tensor:
            return f[s:e]

        def affine(s: int) -> tuple[torch.Tensor, torch.Tensor]:
            return biases[s // tile], scale
        return rows, affine

    def _conv1_rows(self, a: torch.Tensor, base: torch.Tensor, b1: torch.Tensor,
                    coef: torch.Tensor, rows_w1: torch.Tensor, s: int, e: int,
                    out: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens ``[s, e)`` of one prompt's first transposed convolution on form (*):
        ``b1 + a * (B W1) + Q^T (M W1)``, (e - s, 4*c1), written into ``out`` (contiguous)
        or else a reused buffer.

        Args:
            a: (n, 1) scales. base: (n, 4*c1) ``conv1_base`` rows. b1: (4*c1,) or (n, 4*c1)
                (:meth:`_upscaling_biases`). coef: (r, n) coefficients. rows_w1: (r, 4*c1).
            s, e: the token rows, 0 <= s < e <= n.
        """
        if out is None:
            out = self._workspace("f1", e - s, rows_w1.shape[1], rows_w1)
        bias = b1 if b1.ndim == 1 else b1[s:e]
        torch.addcmul(bias, a[s:e], base[s:e], out=out)
        return out.addmm_(coef[:, s:e].T, rows_w1)

    def norm_stats(self, image_tokens: FactoredImageTokens, ctx: FactoredContext,
                   rows_w1: torch.Tensor) -> torch.Tensor | None:
        """GroupNorm(1, C) statistics of the first upscaling stage per prompt, over every
        channel and pixel of the whole map (EfficientSAM): (B, 2) ``[mean, 1 / sqrt(var +
        eps)]`` (biased variance, as ``nn.GroupNorm``), in ``self.dtype``; ``None`` for the
        per-pixel LayerNorm2d of SAM and HQ-SAM, which needs no statistics.

        Args:
            image_tokens: B prompts. ctx: their image's context. rows_w1: (B, r, 4*c1)
                :meth:`mask_inputs` rows times ``w1``.
        """
        if not self.group_norm:
            return None
        f = torch.baddbmm(torch.addcmul(self.b1, image_tokens.scale[..., None], ctx.conv1_base),
                          image_tokens.coef.transpose(1, 2), rows_w1)  # (B, HW, 4*c1)
        mean = f.mean((1, 2))
        var = (f - mean[:, None, None]).square_().mean((1, 2))
        return torch.stack([mean, torch.rsqrt(var + self.ln_eps)], 1)

    def _upscale_norm(self, f: torch.Tensor, stats: torch.Tensor | None) -> torch.Tensor:
        """The first upscaling stage's normalisation of ``f`` (..., n, c1): LayerNorm over
        the c1 channels of each pixel, or with ``stats`` (2,) / (B, 2) (:meth:`norm_stats`,
        one row per leading index of a 3-d ``f``) the GroupNorm with those statistics; then
        the per-channel affine."""
        if stats is None:
            return F.layer_norm(f, (self.c1,), self.ln_w, self.ln_b, self.ln_eps)
        if f.ndim == 3:
            stats = stats[:, None, None, :]
        return torch.addcmul(self.ln_b, (f - stats[..., 0]) * stats[..., 1], self.ln_w)

    def _tokens_to_shared_image(self, attn: DecoderAttention, q_in: torch.Tensor,
                                ctx: FactoredContext) -> torch.Tensor:
        """Tokens (B, Nt, C) attend to the shared first-block image keys/values -> (B, Nt, C)."""
        b, nt, _ = q_in.shape
        q = _heads(attn.q_proj(q_in), self.heads)  # (B, Nt, H, d)
        q = q.permute(2, 0, 1, 3).reshape(self.heads, b * nt, -1)  # (H, B*Nt, d)
        out = F.scaled_dot_product_attention(q, ctx.k0, ctx.v0)  # (H, B*Nt, d)
        out = out.reshape(self.heads, b, nt, -1).permute(1, 2, 0, 3).reshape(b, nt, -1)
        return attn.out_proj(out)

    @staticmethod
    def _fold_values(attn: DecoderAttention, v: torch.Tensor) -> torch.Tensor:
        """``W_o v_t`` per head and token plus ``b_o / H`` (the attention weights of each head
        sum to 1 over the tokens, so the H heads add the output bias exactly once):
        (B, Nt, H, d) -> (B, H*Nt, C)."""
        b, nt, h, d = v.shape
        m = torch.einsum("bthd,chd->bhtc", v, attn.out_proj.weight.unflatten(1, (h, d)))
        return (m + attn.out_proj.bias / h).reshape(b, h * nt, -1)

    def _logits_from_conv1(self, f: torch.Tensor | Callable[[int, int], torch.Tensor],
                           weights: torch.Tensor, th: int, tw: int,
                           out: torch.Tensor, b2: torch.Tensor,
                           stats: torch.Tensor | None = None,
                           tile_affine: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
                           | None = None) -> torch.Tensor:
        """Rest of the output upscaling for one prompt, from the first transposed convolution's
        output ``f`` (th*tw, 4*c1) (token-major, sub-pixel (i, j), channel): LayerNorm2d (or
        GroupNorm with ``stats``, :meth:`_upscale_norm`), GELU,
        second transposed convolution, GELU, then the dot product of every upscaled pixel's
        c2 features with the hypernetwork ``weights`` (M, c2); written into ``out``
        (M, 4*th, 4*tw) in row-major pixel order. ``b2``: the second convolution's bias,
        (4*c2,) or per row (th*tw*4, 4*c2) (:meth:`_upscaling_biases`).

        The map goes through these steps :meth:`upscale_tile_tokens` tokens at a time (each
        output pixel depends on its token alone), so that a tile's intermediates stay in
        cache; ``f`` may be a function ``(s, e) -> rows [s, e) of f`` that makes each tile of
        the first convolution when it is needed (:meth:`_conv1_rows`). On a 2-core AMD EPYC
        (AVX2, 1 MB L2 per core; float32, one thread; 8 prompts, medians of 8 interleaved
        runs) tiles of 512 tokens took MobileSAM's whole-map logits from 14.8 to 12.7 ms per
        prompt (dog.jpg, 43 x 64 tokens) and EfficientSAM's from 20.9 to 17.7 ms (64 x 64);
        tiles of 256 and 2048 tokens were slower than 512 and 1024. On a 2-core Intel Xeon
        (AVX-512, 2 MB L2 per core) 1024 was 7-9% faster than 512 (:data:`UPSCALE_TILE_TOKENS`).

        The last product of each tile is (M, c2) x (c2, tile*16), the second convolution's
        output viewed one pixel per row and transposed, into a (M, tile*16) block: the mask
        dimension of 1-3 is the product's row count, not its column count (in float32 on a
        2-core CPU 1.0-1.3 ms against 1.9 ms per 64 x 64 map).

        ``tile_affine`` (:meth:`_group_norm_conv1`): ``s -> (bias, scale)``, the whole map's
        GroupNorm and affine for the tile starting at row ``s``; the normalisation is then
        one pass, ``bias + f * scale``, into a reused buffer."""
        m = weights.shape[0]
        n = th * tw
        rows = f if callable(f) else (lambda s, e: f[s:e])
        # (M, 16 * tile) blocks, one after another: tile [s, e) at M*16*s
        res = self._workspace("res", 1, 16 * n * m, weights).view(-1)
        tile = self.upscale_tile_tokens(n, res.device)
        for s in range(0, n, tile):
            e = min(s + tile, n)
            ft = rows(s, e).view(-1, self.c1)
            if tile_affine is not None:
                bias_t, scale_t = tile_affine(s)
                g = torch.addcmul(bias_t, ft, scale_t,
                                  out=self._workspace("g", ft.shape[0], self.c1, ft))
            else:
                g = self._upscale_norm(ft, stats)
            torch.ops.aten.gelu_(g)  # in place: the same values as F.gelu, no new buffer
            bias = b2 if b2.ndim == 1 else b2[4 * s:4 * e]
            f2 = torch.addmm(bias, g, self.w2, out=self._workspace("f2", g.shape[0], 4 * self.c2, g))
            torch.ops.aten.gelu_(f2)  # (tile*4, 4*c2)
            torch.mm(weights, f2.view(-1, self.c2).T,
                     out=res[16 * m * s:16 * m * e].view(m, 16 * (e - s)))
        torch.index_select(res, 0, self._tiled_logit_order(th, tw, m, res.device),
                           out=out.view(-1))
        return out

    @staticmethod
    def upscale_tile_tokens(n: int, device: torch.device) -> int:
        """Tokens of a prompt's ``n``-token map that :meth:`_logits_from_conv1` takes through
        the output upscaling at a time: :data:`UPSCALE_TILE_TOKENS` on a CPU (a tile's
        intermediates stay in L2), the whole map (``n``) on other devices, where each step is
        one kernel launch over the map (six launches per map instead of six per tile). The
        logits do not depend on the tiling beyond float rounding."""
        return UPSCALE_TILE_TOKENS if device.type == "cpu" else n

    def _workspace(self, name: str, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        """A (rows, cols) buffer of ``like``'s dtype and device, kept between calls and
        reused while the size is the same. Writing the upscaling's intermediates into memory
        that is already mapped and warm instead of fresh allocations is faster: for
        whole-map buffers ~15% of the mask logits on a 2-core CPU (5.2 -> 4.35 ms per prompt,
        float32, square crop). The last ``WORKSPACE_SIZES`` sizes per name are kept (see
        there). Each thread has its own buffers, so batches may be decoded on several
        threads at once."""
        work = getattr(self._local, "work", None)
        if work is None:
            work = self._local.work = {}
        key = (name, rows, cols, like.dtype, like.device)
        buf = work.pop(key, None)
        if buf is None:
            buf = like.new_empty(rows, cols)
            stale = [k for k in work if k[0] == name]
            for k in stale[:len(stale) - (WORKSPACE_SIZES - 1)]:  # least recently used first
                del work[k]
        work[key] = buf  # most recently used last
        return buf

    def _logit_order(self, th: int, tw: int, m: int, device: torch.device) -> torch.Tensor:
        """(M*16*th*tw,) int64: position in the flattened (th*tw*4, 4*M) product of
        :meth:`_logits_from_conv1` of each (mask, row-major low-res pixel). Cached per size."""
        key = (th, tw, m, str(device))
        if key not in self._orders:
            order = self._pixel_order(th, tw, device)
            self._orders[key] = (order[None] * m + torch.arange(m, device=device)[:, None]).reshape(-1)
        return self._orders[key]

    def _tiled_logit_order(self, th: int, tw: int, m: int, device: torch.device) -> torch.Tensor:
        """(M*16*th*tw,) int64: position in :meth:`_logits_from_conv1`'s tiled product of each
        (mask, row-major low-res pixel): products' pixel position q (:meth:`_pixel_order`) in
        the tile starting at 16*s, of 16*L pixels, is at ``M*16*s + mask*16*L + (q - 16*s)``.
        Cached per size."""
        tile = 16 * self.upscale_tile_tokens(th * tw, device)
        key = ("tiled", th, tw, m, tile, str(device))
        if key not in self._orders:
            q = self._pixel_order(th, tw, device)
            start = torch.div(q, tile, rounding_mode="floor") * tile
            length = (16 * th * tw - start).clamp(max=tile)
            mask = torch.arange(m, device=device)[:, None]
            self._orders[key] = (m * start + mask * length + (q - start)).reshape(-1)
        return self._orders[key]

    def _pixel_order(self, th: int, tw: int, device: torch.device) -> torch.Tensor:
        """(16*th*tw,) int64: for each low-res pixel in row-major order, its position in the
        upscaling products' order (token y, token x, sub-pixel i, j of the first transposed
        convolution, k, l of the second); pixel (4y + 2i + k, 4x + 2j + l). Cached per size
        (a gather with it is faster than a 7-d permute copy)."""
        key = (th, tw, str(device))
        if key not in self._orders:
            idx = torch.arange(16 * th * tw, device=device).view(th, tw, 2, 2, 2, 2)
            self._orders[key] = idx.permute(0, 2, 4, 1, 3, 5).reshape(-1)
        return self._orders[key]

    def mask_inputs(self, tokens: torch.Tensor, image_tokens: FactoredImageTokens,
                    mask_index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-prompt inputs of :meth:`predict_mask_logits` that do not depend on the
        token window: the hypernetwork weights (B, M, c2) of the chosen mask tokens, and the
        rows of form (*) through the first transposed convolution, ``rows @ w1``
        (B, r, 4*c1); both in ``self.dtype``.

        Args:
            tokens: (B, Nt, C). image_tokens: :class:`FactoredImageTokens` of B prompts.
            mask_index: mask tokens to decode.
        """
        weights = self.dec.hypernetwork_weights(tokens, mask_index)  # (B, M, c2)
        return weights, torch.matmul(image_tokens.rows, self.w1)

    def _window_logits_batched(self, image_tokens: FactoredImageTokens, rows_w1: torch.Tensor,
                               base: torch.Tensor, weights: torch.Tensor,
                               token_box: tuple[int, int, int, int], grid_hw: tuple[int, int],
                               b1: torch.Tensor, b2: torch.Tensor,
                               norm_stats: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`predict_mask_logits` of a small token window for all prompts at once (a few
        large operations instead of ~9 small ones per prompt: the crop-edge strips).

        Args:
            image_tokens: B prompts. rows_w1: (B, r, 4*c1) their rows times ``w1``.
            base: (n, 4*c1) ``conv1_base`` of the window's n tokens. weights: (B, M, c2).
            token_box, grid_hw: as in :meth:`predict_mask_logits`.
            b1, b2: the window's upscaling biases (:meth:`_upscaling_biases`).

        Returns:
            (B, M * 16 * n) logits in ``self.dtype``, (mask, row-major low-res pixel) order.
        """
        gh, gw = grid_hw
        y0, y1, x0, x1 = token_box
        th, tw = y1 - y0, x1 - x0
        b, r = image_tokens.coef.shape[:2]
        m = weights.shape[1]
        coef = image_tokens.coef.view(b, r, gh, gw)[:, :, y0:y1, x0:x1].reshape(b, r, th * tw)
        a = image_tokens.scale.view(b, gh, gw)[:, y0:y1, x0:x1].reshape(b, th * tw, 1)
        f = torch.baddbmm(torch.addcmul(b1, a, base), coef.transpose(1, 2), rows_w1)
        if norm_stats is None:
            g = self._upscale_norm(f.view(-1, self.c1), None)
        else:
            g = self._upscale_norm(f.view(b, -1, self.c1), norm_stats).view(-1, self.c1)
        torch.ops.aten.gelu_(g)
        if b2.ndim == 2:  # per-row biases (skip features): the same for every prompt
            b2 = b2.repeat(b, 1)
        f2 = torch.addmm(b2, g, self.w2)  # (B*n*4, 4*c2)
        torch.ops.aten.gelu_(f2)
        res = torch.bmm(f2.view(b, -1, self.c2), weights.transpose(1, 2))  # (B, 16n, M)
        return res.view(b, -1)[:, self._logit_order(th, tw, m, res.device)]

    def upscaled_features(self, image_tokens: FactoredImageTokens, ctx: FactoredContext,
                          token_box: tuple[int, int, int, int], rows_w1: torch.Tensor,
                          norm_stats: torch.Tensor | None = None) -> torch.Tensor:
        """The output upscaling's features (``MaskDecoder.upscale``) of a token window, for
        decoders that use them beyond the hypernetwork dot products (HQ-SAM's HQ mask).

        Args:
            image_tokens: B prompts. ctx: their image's context.
            token_box: ``(y0, y1, x0, x1)`` tokens inside the grid.
            rows_w1: (B, r, 4*c1) :meth:`mask_inputs` rows times ``w1``.
            norm_stats: :meth:`norm_stats` (GroupNorm upscaling only; computed when None).

        Returns:
            (B, 4*th, 4*tw, c2) features in ``self.dtype``, channels last, low-res pixels
            ``[4*y0, 4*y1) x [4*x0, 4*x1)`` in row-major order (each depends on its token
            alone: both transposed convolutions have kernel = stride).
        """
        gh, gw = ctx.grid_hw
        y0, y1, x0, x1 = token_box
        th, tw = y1 - y0, x1 - x0
        b, r = image_tokens.coef.shape[:2]
        if self.group_norm and norm_stats is None:
            norm_stats = self.norm_stats(image_tokens, ctx, rows_w1)
        base = ctx.conv1_base.view(gh, gw, -1)[y0:y1, x0:x1].reshape(th * tw, -1)
        coef = image_tokens.coef.view(b, r, gh, gw)[:, :, y0:y1, x0:x1].reshape(b, r, th * tw)
        a = image_tokens.scale.view(b, gh, gw)[:, y0:y1, x0:x1].reshape(b, th * tw, 1)
        b1, b2 = self._upscaling_biases(ctx, token_box)
        f = torch.baddbmm(torch.addcmul(b1, a, base), coef.transpose(1, 2), rows_w1)
        g = self._upscale_norm(f.view(b, -1, self.c1), norm_stats).view(-1, self.c1)
        torch.ops.aten.gelu_(g)
        if b2.ndim == 2:  # per-row biases (skip features): the same for every prompt
            b2 = b2.repeat(b, 1)
        f2 = torch.addmm(b2, g, self.w2)  # (B*n*4, 4*c2), products' pixel order
        torch.ops.aten.gelu_(f2)
        feats = f2.view(b, -1, self.c2)[:, self._pixel_order(th, tw, f2.device)]
        return feats.view(b, 4 * th, 4 * tw, self.c2)

    def predict_iou(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, Nt, C) tokens -> predicted IoU (B, 4) float32 for all mask tokens."""
        return self.dec.predict_iou(tokens).float()


def check_points_xy(points_xy, device: torch.device) -> torch.Tensor:
    """The seam's prompt points as a (B, 2) float64 tensor on ``device`` (xy pixels; numpy
    arrays are accepted).

    Raises:
        ValueError: not of shape (B, 2).
    """
    pts = torch.as_tensor(points_xy, dtype=torch.float64, device=device)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points_xy must be (B, 2) xy, got shape {tuple(pts.shape)}")
    return pts


# Output tokens of the multimask outputs, and those read after the transformer: the IoU token
# (0) and the multimask tokens (SAM paper §3: token 0 is the single-mask output).
MULTIMASK_TOKENS = [1, 2, 3]
FINAL_TOKENS = [0] + [1 + i for i in MULTIMASK_TOKENS]


class FactoredPointDecoder:
    """SAM v1 / MobileSAM / EfficientSAM fast point decoder (the :mod:`sam_model.point_decoder` seam) over
    :class:`FactoredGridDecoder`: multimask output (tokens 1-3), the predicted-IoU filter before
    any upscaling, and the reject windows decoded from their few tokens alone.

    Args:
        decoder: the :class:`FactoredGridDecoder` (its ``dtype`` is the arithmetic).
        ctx: its :meth:`FactoredGridDecoder.prepare` context of the image.
        sparse_fn: ``points_xy (B, 2) float64 image pixels -> (B, Np, C)`` sparse prompt
            embeddings of single foreground points (the prompt encoder).
        token_hw: (th, tw) image tokens decoded (those under the image, not the padding); the
            logits returned are the low-res pixels ``(4*th, 4*tw)``.
        chunk_size: prompts per decoder pass (a cache knob: the results do not depend on it).
        final_tokens: output-token positions read after the transformer, the IoU token's and
            the multimask tokens' (:data:`FINAL_TOKENS` for SAM; SAM 2's are one further
            on, after its object-score token).
        token_counts: how many identical prompt tokens each of ``sparse_fn``'s Np tokens
            stands for (:meth:`FactoredGridDecoder.run_transformer`); default one each.
    """

    def __init__(self, decoder: FactoredGridDecoder, ctx: FactoredContext,
                 sparse_fn: Callable[[torch.Tensor], torch.Tensor], token_hw: tuple[int, int],
                 chunk_size: int, final_tokens: Sequence[int] = FINAL_TOKENS,
                 token_counts: Sequence[int] | None = None) -> None:
        self.decoder, self.ctx, self.sparse_fn = decoder, ctx, sparse_fn
        self.final_tokens = list(final_tokens)
        self.token_counts = None if token_counts is None else list(token_counts)
        self.token_hw = token_hw
        self.low_res_hw = (4 * token_hw[0], 4 * token_hw[1])
        self.chunk_size = chunk_size

    @torch.inference_mode()
    def decode(self, points_xy: torch.Tensor, iou_thresh: float,
               reject: Sequence[RejectWindow] = ()) -> DecodedMasks:
        """See :meth:`sam_model.point_decoder.PointDecoder.decode`.

        A prompt whose outputs are all dropped by a reject window skips the whole-map logits.
        Returns low-res logits
        (K, 4*th, 4*tw) float32 (the top-left part of the reference's 256 x 256 map).
        """
        points_xy = check_points_xy(points_xy, self.ctx.keys0.device)
        gd, ctx = self.decoder, self.ctx
        sparse = self.sparse_fn(points_xy)
        n = points_xy.shape[0]
        lows, ious, idxs = [], [], []
        step = self.chunk_size
        for s in range(0, n, step):
            with record_function("decoder.transformer"):
                tokens, img_tokens = gd.run_transformer(ctx, sparse[s:s + step], self.final_tokens,
                                                        self.token_counts)
                iou = gd.predict_iou(tokens)[:, MULTIMASK_TOKENS]  # (b, 3)
            keep = iou > iou_thresh if iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
            rows = keep.any(1).nonzero().flatten()
            if len(rows) == 0:
                continue
            k = keep[rows]
            # no copy of the (b, r, HW) coefficients when every prompt of the chunk is kept
            tok, img = (tokens, img_tokens) if len(rows) == len(keep) else \
                (tokens[rows], img_tokens[rows])
            with record_function("decoder.mask_logits"):
                inputs = gd.mask_inputs(tok, img, MULTIMASK_TOKENS)  # shared by windows and maps
                # GroupNorm statistics of the whole map: computed here for the reject windows,
                # else by predict_mask_logits from each whole map as it is made.
                inputs = (*inputs, gd.norm_stats(img, ctx, inputs[1]) if reject else None)
                if reject:
                    k = k & ~self._rejected(tok, img, inputs, reject, k)
                live = k.any(1).nonzero().flatten()
                if len(live) == 0:
                    continue
                if len(live) < len(rows):
                    rows, k, tok, img = rows[live], k[live], tok[live], img[live]
                    inputs = tuple(None if x is None else x[live] for x in inputs)
            with record_function("decoder.mask_logits"):
                low = gd.predict_mask_logits(tok, img, ctx.grid_hw, MULTIMASK_TOKENS, self.token_hw,
                                             ctx, weights=inputs[0], rows_w1=inputs[1],
                                             norm_stats=inputs[2])  # (r, 3, 4th, 4tw)
            lows.append((low, k.flatten().nonzero().flatten()))
            ious.append(iou[rows][k])
            idxs.append((rows[:, None] + s).expand(-1, 3)[k])
        if not lows:
            return DecodedMasks.empty(self.low_res_hw, points_xy.device)
        return DecodedMasks(self._gather(lows), torch.cat(ious), torch.cat(idxs))

    @staticmethod
    def _gather(lows: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The kept outputs of every chunk in one (K, h, w) tensor: ``lows`` holds per chunk
        its logits (r, 3, h, w) and the flat indices (k,) of its kept outputs; each kept map
        is copied once, straight into its place."""
        first = lows[0][0]
        out = first.new_empty(sum(len(i) for _, i in lows), *first.shape[2:])
        start = 0
        for low, index in lows:
            torch.index_select(low.flatten(0, 1), 0, index, out=out[start:start + len(index)])
            start += len(index)
        return out

    def _rejected(self, tokens: torch.Tensor, image_tokens: FactoredImageTokens, inputs: tuple,
                  windows: Sequence[RejectWindow], wanted: torch.Tensor) -> torch.Tensor:
        """(B, 3) bool: a reject window drops the multimask output, from the window's tokens
        only. ``inputs`` is :meth:`FactoredGridDecoder.mask_inputs` of the B prompts and their
        :meth:`FactoredGridDecoder.norm_stats`;
        ``wanted`` (B, 3) bool marks the outputs that matter (the IoU survivors): a prompt
        whose wanted outputs are all dropped already is not decoded for the next windows (its
        other entries may then stay False)."""
        near = torch.zeros_like(wanted)
        todo = torch.arange(len(wanted), device=wanted.device)
        for win in windows:
            every = len(todo) == len(wanted)  # no copies then
            tok, img = (tokens, image_tokens) if every else (tokens[todo], image_tokens[todo])
            weights, rows_w1, stats = inputs if every else \
                tuple(None if x is None else x[todo] for x in inputs)
            low = self.decoder.predict_mask_logits(
                tok, img, self.ctx.grid_hw, MULTIMASK_TOKENS, ctx=self.ctx,
                token_box=win.token_box, weights=weights, rows_w1=rows_w1,
                norm_stats=stats)  # (b, 3, h, w)
            near[todo] |= win.reject(low.flatten(0, 1)).view(len(todo), -1)
            todo = (wanted & ~near).any(1).nonzero().flatten()
            if len(todo) == 0:
                break
        return near
