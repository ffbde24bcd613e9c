"""The SAM 2.1 image model: pre-processing, the Hiera + FPN image encoder, the prompt encoder and
the SAM 2 mask decoder (Ravi et al., "SAM 2", 2024; image mode of the official ``SAM2Base`` as
driven by ``SAM2ImagePredictor`` and ``SAM2AutomaticMaskGenerator``).

Stateless, like :class:`sam_model.sam.Sam`: :meth:`Sam2.encode_image` returns a
:class:`Sam2ImageEmbedding`, :meth:`Sam2.decode` takes it with prompts in original-image pixels,
:meth:`Sam2.point_decoder` gives the generator's per-image decoder (the seam of
:mod:`sam_model.point_decoder`): the exact fast rewrite
(:class:`~sam_model.sam2_factored_decoder.Sam2FactoredPointDecoder`) or the plain one
(:class:`Sam2PlainPointDecoder`).

Pre-processing follows ``SAM2Transforms`` exactly: the uint8 image becomes float32 0..1
(``ToTensor``), is resized to 1024 x 1024 *without* keeping the aspect ratio by
``F.interpolate(mode="bilinear", align_corners=False, antialias=True)`` (torchvision
``Resize`` on a tensor; skipped when the image is already 1024 x 1024), then normalised by the
ImageNet mean/std on 0..1 values. Prompt coordinates are mapped to that frame by
``x / W * 1024``, ``y / H * 1024`` in float32; low-resolution logits (256 x 256) cover the
whole image and are resized to (H, W) directly.

Image mode: the learned ``no_mem_embed`` is added to the lowest-resolution (stride-16) level
and the stride-4/8 levels are projected by the decoder's ``conv_s0``/``conv_s1`` once per image
(``SAM2Base.forward_image``). The video modules are absent (their checkpoint keys are listed
in :data:`sam_model.sam2_checkpoints.VIDEO_ONLY_KEY_PREFIXES`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .family_model import FamilyModel, checks_decoder_options
from .fpn_neck import FpnNeck
from .hiera import Hiera
from .point_decoder import DecodedMasks, PointDecoder, RejectWindow, apply_filters
from .resampling import bilinear_matrix
from .prompt_encoder import LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT, Sam2PromptEncoder
from .sam import check_compute_dtype, check_rgb_image, default_chunk_size
from .sam2_configs import Sam2Config
from .sam2_factored_decoder import Sam2FactoredPointDecoder
from .sam2_mask_decoder import Sam2MaskDecoder


@dataclass(frozen=True)
class Sam2ImageEmbedding:
    """One image's SAM 2 encoder output, everything the decoder needs.

    Attributes:
        image_embedding: (1, 256, h, w) float32 stride-16 FPN level with ``no_mem_embed``
            added (h = w = 64 for the 1024 input).
        high_res_features: (feat_s0 (1, 32, 4h, 4w), feat_s1 (1, 64, 2h, 2w)) float32, the
            stride-4 and stride-8 FPN levels after ``conv_s0`` / ``conv_s1``.
        original_hw: (H, W) of the image given to :meth:`Sam2.encode_image`, pixels.
    """

    image_embedding: torch.Tensor
    high_res_features: tuple[torch.Tensor, torch.Tensor]
    original_hw: tuple[int, int]

    @property
    def grid_hw(self) -> tuple[int, int]:
        """(h, w) of the image-embedding grid."""
        return tuple(self.image_embedding.shape[-2:])


class Sam2ImageEncoder(nn.Module):
    """Hiera trunk + FPN neck (official ``ImageEncoder``; keys ``trunk.*``, ``neck.*``).

    Input ``(B, 3, 1024, 1024)`` float32 normalised pixels; output the neck levels after the
    scalp, finest first: ``(B, 256, 256, 256)``, ``(B, 256, 128, 128)``, ``(B, 256, 64, 64)``.
    """

    def __init__(self, cfg: Sam2Config) -> None:
        super().__init__()
        self.trunk = Hiera(cfg.trunk)
        self.neck = FpnNeck(cfg.neck, cfg.trunk.stage_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x``: (B, 3, H, W) float32 -> FPN levels (see class docstring)."""
        return self.neck(self.trunk(x))


class Sam2(FamilyModel):
    """SAM 2.1 image model with the official image-mode state-dict layout (``image_encoder``,
    ``sam_prompt_encoder``, ``sam_mask_decoder``, ``no_mem_embed``).

    Args:
        cfg: the architecture (:data:`sam_model.sam2_configs.SAM2_CONFIGS`).
    """

    family = "sam2"

    def __init__(self, cfg: Sam2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_encoder = Sam2ImageEncoder(cfg)
        self.sam_prompt_encoder = Sam2PromptEncoder(cfg.decoder)
        self.sam_mask_decoder = Sam2MaskDecoder(cfg.decoder)
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, cfg.neck.d_model))
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(-1, 1, 1), False)

    @property
    def input_size(self) -> int:
        """Side of the square model input in pixels (1024)."""
        return self.cfg.image_size

    # ---------------------------------------------------------------- image side
    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """Resize (aspect ratio not kept) and normalise one image as ``SAM2Transforms`` does
        (see module docstring).

        Args:
            image: (H, W, 3) uint8 RGB.

        Returns:
            (1, 3, S, S) float32 on the model's device, S = ``input_size``.

        Raises:
            ValueError: ``image`` is not an (H, W, 3) uint8 array.
        """
        check_rgb_image(image)
        if not (image.flags.c_contiguous and image.flags.writeable):
            image = np.array(image)  # a crop view or a read-only array: copy
        x = torch.from_numpy(image).to(self.device)
        x = x.permute(2, 0, 1).to(torch.float32).div(255)[None]
        s = self.input_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.pixel_mean) / self.pixel_std

    def image_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """FPN levels of a preprocessed batch, before ``no_mem_embed`` and the high-res
        projections: ``x`` (B, 3, 1024, 1024) float32 -> [(B, 256, 256, 256),
        (B, 256, 128, 128), (B, 256, 64, 64)] float32."""
        return self.image_encoder(x)

    @torch.inference_mode()
    def encode_images(self, images: list[np.ndarray],
                      compute_dtype: torch.dtype = torch.float32) -> list[Sam2ImageEmbedding]:
        """Run the image encoder once over a batch of images.

        Args:
            images: list of (H_i, W_i, 3) uint8 RGB arrays (sizes may differ).
            compute_dtype: ``torch.float32`` (default, the reference's computation) or
                ``torch.bfloat16`` (the encoder runs under ``torch.autocast``; an
                approximation). The embeddings are float32 either way.

        Returns:
            one :class:`Sam2ImageEmbedding` per image.

        Raises:
            ValueError: an image is not (H, W, 3) uint8, or ``compute_dtype`` is not one of
                the two.
        """
        check_compute_dtype(compute_dtype)
        x = torch.cat([self.preprocess(im) for im in images], 0)
        with torch.autocast(self.device.type, dtype=compute_dtype,
                            enabled=compute_dtype != torch.float32):
            level0, level1, level2 = self.image_features(x)
            feat_s0, feat_s1 = self.sam_mask_decoder.project_high_res_features(level0, level1)
        feat_s0, feat_s1, level2 = feat_s0.float(), feat_s1.float(), level2.float()
        if self.cfg.directly_add_no_mem_embed:
            level2 = level2 + self.no_mem_embed.view(1, -1, 1, 1)
        return [Sam2ImageEmbedding(level2[i:i + 1], (feat_s0[i:i + 1], feat_s1[i:i + 1]),
                                   tuple(im.shape[:2])) for i, im in enumerate(images)]

    def encode_image(self, image: np.ndarray,
                     compute_dtype: torch.dtype = torch.float32) -> Sam2ImageEmbedding:
        """:class:`Sam2ImageEmbedding` of one (H, W, 3) uint8 RGB image; see
        :meth:`encode_images`."""
        return self.encode_images([image], compute_dtype)[0]

    # ---------------------------------------------------------------- prompt side
    def to_input_frame(self, coords_xy: torch.Tensor, emb: Sam2ImageEmbedding) -> torch.Tensor:
        """Map xy in original-image pixels to the 1024 x 1024 model-input frame
        (``SAM2Transforms.transform_coords(normalize=True)``): cast to float32, then
        ``x / W * 1024`` and ``y / H * 1024``.

        ``coords_xy``: (..., 2) float, xy. Returns (..., 2) float32 on the same device.
        """
        h, w = emb.original_hw
        c = coords_xy.to(torch.float32).clone()
        c[..., 0] = c[..., 0] / w
        c[..., 1] = c[..., 1] / h
        return c * self.input_size

    def dense_pe(self, emb: Sam2ImageEmbedding) -> torch.Tensor:
        """Positional encoding of the embedding grid: (1, 256, h, w) float32."""
        return self.sam_prompt_encoder.dense_positional_encoding(emb.grid_hw)

    @torch.inference_mode()
    def decode_unclamped(self, emb: Sam2ImageEmbedding, points_xy: torch.Tensor | None = None,
                         labels: torch.Tensor | None = None,
                         boxes_xyxy: torch.Tensor | None = None,
                         mask_input: torch.Tensor | None = None, multimask_output: bool = True
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`decode` without the final clamp: the low-resolution logits that the reference
        resizes to the image (``postprocess_masks``) for the mask and its stability score.
        Arguments, returns and errors as :meth:`decode`."""
        dev = self.device
        pts = lab = None
        if points_xy is not None:
            if labels is None:
                raise ValueError("Sam2.decode: points_xy were given without labels")
            pts = self.to_input_frame(points_xy.to(dev), emb)
            lab = labels.to(dev, torch.int32)
        if boxes_xyxy is not None:
            corners = self.to_input_frame(boxes_xyxy.to(dev).reshape(-1, 2, 2), emb)
            corner_labels = torch.tensor([[LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT]],
                                         dtype=torch.int32, device=dev).repeat(len(corners), 1)
            pts = corners if pts is None else torch.cat([corners, pts], 1)
            lab = corner_labels if lab is None else torch.cat([corner_labels, lab], 1)
        if mask_input is not None:
            mask_input = mask_input.to(dev, torch.float32)
        sparse, dense = self.sam_prompt_encoder(pts, lab, None, mask_input, emb.grid_hw)
        return self.sam_mask_decoder(emb.image_embedding, self.dense_pe(emb), sparse, dense,
                                     multimask_output, emb.high_res_features)

    @torch.inference_mode()
    def decode(self, emb: Sam2ImageEmbedding, points_xy: torch.Tensor | None = None,
               labels: torch.Tensor | None = None, boxes_xyxy: torch.Tensor | None = None,
               mask_input: torch.Tensor | None = None, multimask_output: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predict masks for a batch of prompts on one image embedding
        (``SAM2ImagePredictor._predict``).

        A box is passed as two labelled corner points (labels 2, 3) ahead of the click points,
        and a padding point is always appended, as the reference predictor does.

        Args:
            emb: from :meth:`encode_image`.
            points_xy: (B, N, 2) float, xy in original-image pixels, or None.
            labels: (B, N) int, 1 foreground / 0 background / -1 padding; required with points.
            boxes_xyxy: (B, 4) float XYXY in original-image pixels, or None.
            mask_input: (B, 1, 256, 256) float32 low-resolution logits (e.g. a clamped output
                of an earlier call), or None.
            multimask_output: three masks per prompt (tokens 1-3) instead of one (token 0 or,
                when unstable, the best multimask output).

        Returns:
            low-resolution mask logits (B, M, 256, 256) clamped to [-32, 32], predicted IoU
            (B, M) and object-score logits (B, 1), float32; M = 3 or 1.

        Raises:
            ValueError: no prompt, or points without labels.
        """
        low, iou, obj = self.decode_unclamped(emb, points_xy, labels, boxes_xyxy, mask_input,
                                              multimask_output)
        c = self.cfg.low_res_logit_clamp
        return low.clamp(-c, c), iou, obj

    def low_res_to_image(self, emb: Sam2ImageEmbedding) -> tuple[np.ndarray, np.ndarray]:
        """The mask post-processing as two matrices: image-size logits are
        ``ay @ low_res_logits @ ax.T`` with ``ay`` (H, 256) and ``ax`` (W, 256) float64
        (``F.interpolate(low_res, (H, W), mode="bilinear", align_corners=False)``, the
        reference's ``postprocess_masks`` without hole filling)."""
        n_low = 4 * emb.grid_hw[0], 4 * emb.grid_hw[1]
        h, w = emb.original_hw
        return (bilinear_matrix(n_low[0], h, fused_coordinate=True),
                bilinear_matrix(n_low[1], w, fused_coordinate=True))

    @checks_decoder_options
    def point_decoder(self, emb: Sam2ImageEmbedding, compute_dtype: torch.dtype = torch.float32,
                      low_res_hw: tuple[int, int] | None = None, *, plain: bool = False,
                      multimask_output: bool = True, use_m2m: bool = False,
                      chunk_size: int | None = None) -> PointDecoder:
        """The generator's decoder for one encoded image (crop); see
        :mod:`sam_model.point_decoder`.

        Args:
            emb: from :meth:`encode_image`.
            compute_dtype: ``torch.float32`` (the reference's arithmetic) or ``torch.bfloat16``
                (an approximation: the fast decoder's per-prompt work in bfloat16, the plain
                one under ``torch.autocast``; outputs float32).
            low_res_hw: (h, w) top-left part of the 256 x 256 low-res map to return, or None
                for all of it; the fast decoder rounds it up to whole image tokens (4 low-res
                pixels each).
            plain: the plain decoder (:class:`Sam2PlainPointDecoder`: prompt encoder + mask
                decoder forward, then the filters) instead of the exact fast rewrite
                (:class:`~sam_model.sam2_factored_decoder.Sam2FactoredPointDecoder`).
            multimask_output: three outputs per point (SAM 2 generator option) instead of one
                (with the dynamic stability fallback).
            use_m2m: mask-to-mask refinement (SAM 2 generator option, see
                :class:`Sam2PlainPointDecoder`).
            chunk_size: prompts per fast-decoder pass (not the output); default as SAM's
                (:func:`sam_model.sam.default_chunk_size`: on a CPU 4 in float32, 8 in
                bfloat16; a whole batch on a GPU). Unused by the plain decoder.

        Raises:
            ValueError: ``compute_dtype`` is neither float32 nor bfloat16.
        """
        check_compute_dtype(compute_dtype)
        if plain:
            return Sam2PlainPointDecoder(self, emb, compute_dtype, low_res_hw,
                                         multimask_output=multimask_output, use_m2m=use_m2m)
        chunk = default_chunk_size(self.device, compute_dtype) if chunk_size is None else chunk_size
        refiner = None
        if use_m2m:
            refiner = Sam2PlainPointDecoder(self, emb, compute_dtype, None,
                                            multimask_output=False, use_m2m=True).refine
        return Sam2FactoredPointDecoder(
            self, emb, compute_dtype, low_res_hw, multimask_output=multimask_output,
            refiner=refiner, chunk_size=chunk)


class Sam2PlainPointDecoder:
    """SAM 2's plain point decoder: ``SAM2AutomaticMaskGenerator._process_batch`` up to the
    IoU filter, on our modules.

    Each point is one foreground prompt (label 1, no box, no mask input). The outputs
    (3 per point with ``multimask_output``, else 1) are flattened prompt-major. With
    ``use_m2m`` every output is decoded again (``refine_with_m2m``): its point plus its
    low-res logits clamped to [-32, 32] as mask input, single-mask output (with the dynamic
    stability fallback), in chunks of the batch's size; the refined logits and IoU replace
    the first ones. Then the predicted-IoU filter and the reject windows
    (:func:`sam_model.point_decoder.apply_filters`). The returned logits are unclamped (the
    ones the reference resizes to the image).

    Args:
        model: the :class:`Sam2` model.
        emb: the image (crop) embedding.
        compute_dtype: float32 or bfloat16 (autocast).
        low_res_hw: part of the low-res map returned, or None for all.
        multimask_output: see :meth:`Sam2.point_decoder`.
        use_m2m: see above.
    """

    def __init__(self, model: Sam2, emb: Sam2ImageEmbedding, compute_dtype: torch.dtype,
                 low_res_hw: tuple[int, int] | None, *, multimask_output: bool,
                 use_m2m: bool) -> None:
        self.model = model
        self.emb = emb
        self.compute_dtype = compute_dtype
        self.low_res_hw = low_res_hw
        self.multimask_output = multimask_output
        self.use_m2m = use_m2m

    def _decode(self, points: torch.Tensor, mask_input: torch.Tensor | None,
                multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``points`` (B, 1, 2) float32 crop pixels -> unclamped logits (B, M, 256, 256) and
        IoU (B, M), float32."""
        labels = torch.ones(points.shape[:2], dtype=torch.int32, device=points.device)
        with torch.autocast(self.model.device.type, dtype=self.compute_dtype,
                            enabled=self.compute_dtype != torch.float32):
            low, iou, _ = self.model.decode_unclamped(self.emb, points, labels,
                                                      mask_input=mask_input,
                                                      multimask_output=multimask_output)
        return low.float(), iou.float()

    @torch.inference_mode()
    def decode(self, points_xy: np.ndarray | torch.Tensor, iou_thresh: float,
               reject: Sequence[RejectWindow] = ()) -> DecodedMasks:
        """See :meth:`sam_model.point_decoder.PointDecoder.decode`.

        ``points_xy``: (B, 2) float64 xy in crop pixels (cast to float32 as the reference
        does). Returns :class:`DecodedMasks` with (K, 256, 256) (or ``low_res_hw``) float32
        unclamped logits.

        Raises:
            ValueError: ``points_xy`` is not (B, 2).
        """
        pts = torch.as_tensor(points_xy, dtype=torch.float32, device=self.model.device)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"points_xy must be (B, 2) xy, got shape {tuple(pts.shape)}")
        b = pts.shape[0]
        low, iou = self._decode(pts[:, None], None, self.multimask_output)
        m = low.shape[1]
        low, iou = low.flatten(0, 1), iou.flatten(0, 1)
        prompt_index = torch.arange(b, device=pts.device).repeat_interleave(m)
        if self.use_m2m:
            low, iou = self.refine(pts, low, prompt_index)
        return apply_filters(low, iou, prompt_index, iou_thresh, reject, self.low_res_hw)

    @torch.inference_mode()
    def refine(self, points: torch.Tensor, low_res_logits: torch.Tensor,
               prompt_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask-to-mask pass (``refine_with_m2m``): each output decoded again from its
        point and its own low-res logits clamped to [-32, 32] as mask input, single-mask
        output (dynamic stability fallback), in chunks of ``len(points)`` outputs.

        Args:
            points: (B, 2) float32 xy in crop pixels, the batch's prompts.
            low_res_logits: (K, 256, 256) float32 unclamped first-pass logits (whole maps).
            prompt_index: (K,) int64 prompt of each output.

        Returns:
            refined unclamped logits (K, 256, 256) and predicted IoU (K,), float32.
        """
        if len(low_res_logits) == 0:
            return low_res_logits, low_res_logits.new_zeros(0)
        c = self.model.cfg.low_res_logit_clamp
        mask_in = low_res_logits.clamp(-c, c)[:, None]
        pts_k = points[prompt_index][:, None]
        b = len(points)
        parts = [self._decode(pts_k[s:s + b], mask_in[s:s + b], False)
                 for s in range(0, len(mask_in), b)]
        return torch.cat([p[0][:, 0] for p in parts]), torch.cat([p[1][:, 0] for p in parts])


__all__ = ["Sam2", "Sam2ImageEmbedding", "Sam2ImageEncoder", "Sam2PlainPointDecoder"]
