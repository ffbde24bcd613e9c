"""HQ-SAM (Ke et al., 2023, "Segment Anything in High Quality"): SAM's image encoder, prompt
encoder and pre/post-processing with the HQ mask decoder (:mod:`sam_model.hq_mask_decoder`).

ViT-B/L/H (``sam_hq_vit_b/l/h``) and the light HQ-SAM with MobileSAM's TinyViT
(``sam_hq_vit_tiny``). Stateless like :class:`sam_model.sam.Sam`: :meth:`SamHQ.encode_image`
returns an :class:`HQImageEmbedding` (the image embedding, the early-layer encoder feature the
HQ decoder fuses, and the geometry), and :meth:`SamHQ.decode` takes it with prompts in
original-image pixels. Pre-processing (resize of the longest side to 1024, ImageNet
normalisation, zero padding) and mask post-processing are SAM's, as in the official
``segment_anything_hq`` predictor.

HQ-SAM predicts **one mask per prompt** (see :mod:`sam_model.hq_mask_decoder`): the SAM mask
(the best of the three multimask outputs by predicted IoU, or the single-mask output) plus the
HQ token's mask, or the HQ mask alone with ``hq_token_only``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .family_model import FamilyModel, checks_decoder_options
from .configs import SamHQConfig, TinyViTConfig
from .factored_decoder import FactoredGridDecoder
from .factored_hq_decoder import FactoredHQPointDecoder
from .hq_mask_decoder import HQMaskDecoder
from .mask_decoder import upscale_mask_logits
from .point_decoder import DecodedMasks, RejectWindow, apply_filters
from .prompt_encoder import LABEL_FOREGROUND, PromptEncoder
from .resampling import sam_postprocess_matrices
from .sam import (check_compute_dtype, coords_to_input_frame, default_chunk_size,
                  input_size_view, preprocess_image)
from .tiny_vit import TinyViTImageEncoder
from .vit import ViTImageEncoder


@dataclass(frozen=True)
class HQImageEmbedding:
    """One image's encoder outputs for HQ-SAM and the geometry that maps its coordinates.

    Attributes:
        embedding: (1, 256, h, w) float32 image embedding (h = w = 64 for a 1024 input).
        interm_embedding: (1, C_early, h, w) float32, channels-first, the early-layer encoder
            feature (ViT: after the first global-attention block, C_early = ViT width;
            TinyViT: stage-1 output, 160 channels); the official ``interm_embeddings[0]``
            permuted to channels-first.
        original_hw: (H, W) of the image given to :meth:`SamHQ.encode_image`, pixels.
        input_hw: (h', w') of the resized image inside the padded model input, pixels.
    """

    embedding: torch.Tensor
    interm_embedding: torch.Tensor
    original_hw: tuple[int, int]
    input_hw: tuple[int, int]

    @property
    def grid_hw(self) -> tuple[int, int]:
        """(h, w) of the embedding grid."""
        return tuple(self.embedding.shape[-2:])


class SamHQ(FamilyModel):
    """HQ-SAM: image encoder + prompt encoder + HQ mask decoder (official key layout).

    Args:
        cfg: the architecture (:data:`sam_model.configs.SAM_HQ_CONFIGS`).
    """

    family = "sam_hq"

    def __init__(self, cfg: SamHQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if isinstance(cfg.encoder, TinyViTConfig):
            self.image_encoder: nn.Module = TinyViTImageEncoder(cfg.encoder)
        else:
            self.image_encoder = ViTImageEncoder(cfg.encoder)
        self.prompt_encoder = PromptEncoder(cfg.decoder)
        self.mask_decoder = HQMaskDecoder(cfg.decoder, cfg.interm_dim)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(-1, 1, 1), False)

    @property
    def input_size(self) -> int:
        """Side of the square, padded model input in pixels (1024; see :meth:`with_input_size`)."""
        return self.cfg.encoder.img_size

    def with_input_size(self, size: int) -> "SamHQ":
        """The same network (shared weights) run at another square input size, a multiple of
        16 in [256, 4096]; as :meth:`sam_model.sam.Sam.with_input_size`. The early-layer
        feature follows the embedding grid (``size // 16``), the HQ features the low-res map.

        Raises:
            ValueError: ``size`` is not an integer multiple of 16 in [256, 4096].
        """
        return input_size_view(self, size)

    # ---------------------------------------------------------------- image side
    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """(H, W, 3) uint8 RGB -> model input (1, 3, S, S) float32 and the resized (h', w');
        see :func:`sam_model.sam.preprocess_image`.

        Raises:
            ValueError: ``image`` is not an (H, W, 3) uint8 array.
        """
        return preprocess_image(image, self.input_size, self.pixel_mean, self.pixel_std)

    @torch.inference_mode()
    def encode_images(self, images: list[np.ndarray],
                      compute_dtype: torch.dtype = torch.float32) -> list[HQImageEmbedding]:
        """Run the image encoder once over a batch of images, keeping the early-layer feature.

        Args:
            images: list of (H_i, W_i, 3) uint8 RGB arrays (sizes may differ).
            compute_dtype: ``torch.float32`` (the reference's computation) or
                ``torch.bfloat16`` (autocast, an approximation); outputs are float32 either way.

        Returns:
            one :class:`HQImageEmbedding` per image: embedding (1, 256, 64, 64) and early-layer
            feature (1, C_early, 64, 64), float32, for a 1024 input.

        Raises:
            ValueError: an image is not (H, W, 3) uint8, or ``compute_dtype`` is not one of
                the two.
        """
        check_compute_dtype(compute_dtype)
        inputs, sizes = zip(*(self.preprocess(im) for im in images))
        with torch.autocast(self.device.type, dtype=compute_dtype,
                            enabled=compute_dtype != torch.float32):
            emb, interm = self.image_encoder.forward_with_interm(torch.cat(inputs, 0))
        emb, interm = emb.float(), interm.float()
        return [HQImageEmbedding(emb[i:i + 1], interm[i:i + 1], tuple(im.shape[:2]), sizes[i])
                for i, im in enumerate(images)]

    def encode_image(self, image: np.ndarray,
                     compute_dtype: torch.dtype = torch.float32) -> HQImageEmbedding:
        """Encoder outputs of one (H, W, 3) uint8 RGB image; see :meth:`encode_images`."""
        return self.encode_images([image], compute_dtype)[0]

    # ---------------------------------------------------------------- prompt side
    def to_input_frame(self, coords_xy: torch.Tensor, emb: HQImageEmbedding) -> torch.Tensor:
        """xy (..., 2) in original-image pixels -> model-input frame, float64; see
        :func:`sam_model.sam.coords_to_input_frame`."""
        return coords_to_input_frame(coords_xy, emb.original_hw, emb.input_hw)

    def dense_pe(self, emb: HQImageEmbedding) -> torch.Tensor:
        """Positional encoding of the embedding grid: (1, 256, h, w) float32."""
        return self.prompt_encoder.dense_positional_encoding(emb.grid_hw)

    @torch.inference_mode()
    def hq_features(self, emb: HQImageEmbedding) -> torch.Tensor:
        """The image's fused HQ-Features, shared by all its prompts: (1, 32, 4h, 4w) float32
        (:meth:`HQMaskDecoder.hq_features`)."""
        return self.mask_decoder.hq_features(emb.embedding, emb.interm_embedding)

    @torch.inference_mode()
    def decode(self, emb: HQImageEmbedding, points_xy: torch.Tensor | None = None,
               labels: torch.Tensor | None = None, boxes_xyxy: torch.Tensor | None = None,
               mask_input: torch.Tensor | None = None, multimask_output: bool = True,
               hq_token_only: bool = False, hq_features: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict one mask per prompt on one image (official ``SamPredictor.predict_torch``
        with ``return_logits``, low-res part).

        Args:
            emb: from :meth:`encode_image`.
            points_xy: (B, N, 2) float, xy in original-image pixels, or None.
            labels: (B, N) int, 1 foreground / 0 background / -1 padding; required with points.
            boxes_xyxy: (B, 4) float XYXY in original-image pixels, or None.
            mask_input: (B, 1, 256, 256) float32 low-resolution logits, or None.
            multimask_output: the SAM part is the best (by predicted IoU) of the three
                multimask outputs instead of the single-mask output (the official default,
                and what its automatic generator uses).
            hq_token_only: the HQ mask alone instead of SAM mask + HQ mask.
            hq_features: (1, 32, 4h, 4w) from :meth:`hq_features`, to reuse across calls;
                computed when None.

        Returns:
            low-resolution mask logits (B, 1, 256, 256) float32 and predicted IoU (B, 1)
            float32. Map logits to the image with :meth:`upscale_masks`.

        Raises:
            ValueError: no prompt, or points without labels.
        """
        dev = self.device
        pts = self.to_input_frame(points_xy.to(dev), emb) if points_xy is not None else None
        lab = labels.to(dev) if labels is not None else None
        box = self.to_input_frame(boxes_xyxy.to(dev).reshape(-1, 2, 2), emb).reshape(-1, 4) \
            if boxes_xyxy is not None else None
        sparse, dense = self.prompt_encoder(pts, lab, box, mask_input, emb.grid_hw)
        if hq_features is None:
            hq_features = self.hq_features(emb)
        return self.mask_decoder(emb.embedding, self.dense_pe(emb), sparse, dense,
                                 multimask_output, hq_features, hq_token_only)

    def upscale_masks(self, low_res: torch.Tensor, emb: HQImageEmbedding) -> torch.Tensor:
        """Low-resolution logits (B, M, 256, 256) -> logits (B, M, H, W) at the original size
        (reference ``postprocess_masks``)."""
        return upscale_mask_logits(low_res, self.input_size, emb.input_hw, emb.original_hw)

    def low_res_to_image(self, emb: HQImageEmbedding) -> tuple[np.ndarray, np.ndarray]:
        """SAM's post-processing as matrices ``ay (H, n_low)``, ``ax (W, n_low)`` float64:
        image logits = ``ay @ low_res @ ax.T`` (:func:`sam_model.resampling.sam_postprocess_matrices`;
        equal to :meth:`upscale_masks` up to float rounding)."""
        n_low = 4 * emb.grid_hw[0]
        return sam_postprocess_matrices(n_low, self.input_size, emb.input_hw, emb.original_hw)

    @checks_decoder_options
    def point_decoder(self, emb: HQImageEmbedding, compute_dtype: torch.dtype = torch.float32,
                      low_res_hw: tuple[int, int] | None = None, *, plain: bool = False,
                      multimask_output: bool = True, hq_token_only: bool = False,
                      chunk_size: int | None = None
                      ) -> "HQPointDecoder | FactoredHQPointDecoder":
        """The decoder seam (``sam_model.point_decoder``) for one image or crop.

        Args:
            emb: from :meth:`encode_image` (the crop).
            compute_dtype: ``torch.float32`` (the reference's numbers) or ``torch.bfloat16``
                (an approximation; outputs float32): the fast decoder's per-prompt work in
                bfloat16, or the plain decoder under autocast.
            low_res_hw: (h, w) top-left part of the low-res map to return; None: all of it
                (4 x the embedding grid, 256 x 256 for a 1024 input). The fast decoder rounds
                it up to whole image tokens (4 low-res pixels each).
            plain: the prompt encoder + :class:`HQMaskDecoder` forward per prompt, as the
                official code (:class:`HQPointDecoder`), instead of the exact fast rewrite
                (:class:`~sam_model.factored_hq_decoder.FactoredHQPointDecoder`: factored
                image tokens, the IoU filter before any mask, the HQ mask only for the
                survivors and only where it is needed).
            multimask_output: as in :meth:`decode` (default True, the official generator's).
            hq_token_only: as in :meth:`decode` (default False, the official generator's).
            chunk_size: prompts per fast-decoder pass (speed only); default
                :func:`sam_model.sam.default_chunk_size` (on a CPU 4 in float32, 8 in bfloat16; a
                whole batch on a GPU).

        Returns:
            the point decoder, with this image's HQ-Features and positional encoding computed
            once.

        Raises:
            ValueError: ``compute_dtype`` is not float32 or bfloat16, or ``low_res_hw`` exceeds
                the low-res map.
        """
        check_compute_dtype(compute_dtype)
        if plain:
            return HQPointDecoder(self, emb, compute_dtype, low_res_hw, multimask_output,
                                  hq_token_only)
        gh, gw = emb.grid_hw
        nh, nw = low_res_hw or (4 * gh, 4 * gw)
        if not (0 < nh <= 4 * gh and 0 < nw <= 4 * gw):
            raise ValueError(f"low_res_hw {(nh, nw)} must lie within the low-res map "
                             f"{(4 * gh, 4 * gw)}")
        token_hw = (min(-(-nh // 4), gh), min(-(-nw // 4), gw))
        with torch.no_grad():
            fast = FactoredGridDecoder(self.mask_decoder, dtype=compute_dtype)
            no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)  # (1, C, 1, 1)
            ctx = fast.prepare(emb.embedding, self.dense_pe(emb), no_mask.expand_as(emb.embedding))
            hq_features = self.hq_features(emb)

        def sparse_fn(points_xy: torch.Tensor) -> torch.Tensor:
            labels = torch.full((len(points_xy), 1), LABEL_FOREGROUND, dtype=torch.int64,
                                device=self.device)
            pts = self.to_input_frame(points_xy[:, None, :].to(self.device), emb)
            return self.prompt_encoder(pts, labels, None, None, emb.grid_hw)[0]
        chunk = default_chunk_size(self.device, compute_dtype) if chunk_size is None else chunk_size
        return FactoredHQPointDecoder(fast, ctx, hq_features, sparse_fn, token_hw, chunk,
                                      multimask_output, hq_token_only)


class HQPointDecoder:
    """Plain point decoder of HQ-SAM: prompt encoder + HQ mask decoder forward on a batch of
    single foreground points, then the seam's filters (:func:`sam_model.point_decoder.apply_filters`).
    One output per prompt, so the outputs' order is the prompts' order.

    Built by :meth:`SamHQ.point_decoder`; see there for the arguments.
    """

    def __init__(self, model: SamHQ, emb: HQImageEmbedding, compute_dtype: torch.dtype,
                 low_res_hw: tuple[int, int] | None, multimask_output: bool,
                 hq_token_only: bool) -> None:
        full = (4 * emb.grid_hw[0], 4 * emb.grid_hw[1])
        low_res_hw = full if low_res_hw is None else tuple(low_res_hw)
        if not (0 < low_res_hw[0] <= full[0] and 0 < low_res_hw[1] <= full[1]):
            raise ValueError(f"low_res_hw {low_res_hw} must lie within the low-res map {full}")
        self.model, self.emb = model, emb
        self.compute_dtype = compute_dtype
        self.low_res_hw = low_res_hw
        self.multimask_output = multimask_output
        self.hq_token_only = hq_token_only
        with self._autocast():
            self.hq_features = model.hq_features(emb).float()

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.model.device.type, dtype=self.compute_dtype,
                              enabled=self.compute_dtype != torch.float32)

    @torch.inference_mode()
    def decode(self, points_xy: np.ndarray | torch.Tensor, iou_thresh: float,
               reject: Sequence[RejectWindow] = ()) -> DecodedMasks:
        """Masks of the prompts' outputs that pass the filters.

        Args:
            points_xy: (B, 2) float64, xy in pixels of the encoded image, one foreground
                point per prompt.
            iou_thresh: keep outputs with predicted IoU > ``iou_thresh`` (<= 0 keeps all).
            reject: windows whose test drops outputs (:class:`RejectWindow`).

        Returns:
            :class:`DecodedMasks`: low-res logits (K, h, w) float32 (``low_res_hw``),
            predicted IoU (K,) float32, prompt index (K,) int64.

        Raises:
            ValueError: ``points_xy`` is not (B, 2).
        """
        pts = torch.as_tensor(points_xy, dtype=torch.float64, device=self.model.device)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"points_xy must be (B, 2) xy, got shape {tuple(pts.shape)}")
        labels = torch.full((pts.shape[0], 1), LABEL_FOREGROUND, dtype=torch.int64,
                            device=pts.device)
        with self._autocast():
            low, iou = self.model.decode(self.emb, pts[:, None], labels,
                                         multimask_output=self.multimask_output,
                                         hq_token_only=self.hq_token_only,
                                         hq_features=self.hq_features)
        n_out = low.shape[1]
        index = torch.arange(pts.shape[0], device=pts.device).repeat_interleave(n_out)
        return apply_filters(low.flatten(0, 1).float(), iou.flatten().float(), index,
                              iou_thresh, reject, self.low_res_hw)


__all__ = ["SamHQ", "HQImageEmbedding", "HQPointDecoder"]
