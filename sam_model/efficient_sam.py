"""EfficientSAM (Xiong et al., "EfficientSAM: Leveraged Masked Image Pretraining for Efficient
Segment Anything", CVPR 2024): the plain ViT-T / ViT-S image encoder, its prompt encoder and
mask decoder, with the official state-dict layout. Entry points: :func:`build_efficient_sam`,
:func:`load_efficient_sam`.

Stateless like :class:`sam_model.sam.Sam`: :meth:`EfficientSam.encode_image` returns an
:class:`EfficientSamEmbedding` and :meth:`EfficientSam.decode` takes it with prompts in
original-image pixels.

Geometry, exactly as the official code (``EfficientSam.preprocess``, ``get_rescaled_pts``,
``predict_masks``), and unlike SAM's longest-side resize and padding:

- the image, as float32 RGB in 0..1 (``uint8 / 255``, torchvision's ``ToTensor``), is
  *stretched* to 1024 x 1024 with ``F.interpolate(mode="bilinear", align_corners=False)``
  (no antialiasing, no padding, aspect ratio not kept), then normalised by the ImageNet
  mean/std;
- a point (x, y) in original pixels becomes (x * 1024 / W, y * 1024 / H) in the model input
  (negative coordinates become -1, the padding value);
- the 256 x 256 low-res logits cover the whole image; the official post-processing resizes them
  directly to (H, W) with ``F.interpolate(mode="bicubic", align_corners=False)``: no crop and
  bicubic, not bilinear. That is still separable and linear (:meth:`low_res_to_image`), but
  its weights can be negative (a resized logit can leave the range of its taps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .family_model import FamilyModel, checks_decoder_options
from .checkpoints import (EFFICIENT_SAM_CHECKPOINTS, CheckpointMismatch, check_state_dict,
                          describe_efficient_sam_architecture, detect_efficient_sam_architecture,
                          fetch_checkpoint, read_efficient_sam_state_dict)
from .configs import EFFICIENT_SAM_CONFIGS, EfficientSamConfig
from .efficient_sam_mask_decoder import EfficientSamMaskDecoder
from .efficient_sam_prompt_encoder import (LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT,
                                           LABEL_FOREGROUND, EfficientSamPromptEncoder,
                                           pad_points)
from .factored_decoder import FactoredGridDecoder, FactoredPointDecoder
from .plain_vit import PlainViTImageEncoder
from .point_decoder import DecodedMasks, RejectWindow
from .resampling import bicubic_matrix
from .sam import check_compute_dtype, check_rgb_image, default_chunk_size


@dataclass(frozen=True)
class EfficientSamEmbedding:
    """One image's encoder output and the size that maps its coordinates.

    Attributes:
        embedding: (1, 256, h, w) float32 image embedding (h = w = 64 for the 1024 input).
        original_hw: (H, W) of the image given to :meth:`EfficientSam.encode_image`, pixels.
    """

    embedding: torch.Tensor
    original_hw: tuple[int, int]

    @property
    def grid_hw(self) -> tuple[int, int]:
        """(h, w) of the embedding grid."""
        return tuple(self.embedding.shape[-2:])


class EfficientSam(FamilyModel):
    """EfficientSAM: plain ViT image encoder + prompt encoder + mask decoder (official keys
    ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``; the pixel mean/std buffers
    are not in the state dict, as in the official model).

    Args:
        cfg: the architecture (:data:`sam_model.configs.EFFICIENT_SAM_CONFIGS`).
    """

    family = "efficient_sam"

    def __init__(self, cfg: EfficientSamConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_encoder = PlainViTImageEncoder(cfg.encoder)
        self.prompt_encoder = EfficientSamPromptEncoder(cfg.decoder)
        self.mask_decoder = EfficientSamMaskDecoder(cfg.decoder)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(-1, 1, 1), False)

    @property
    def input_size(self) -> int:
        """Side of the square model input in pixels (1024)."""
        return self.cfg.encoder.img_size

    # ---------------------------------------------------------------- image side
    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """Stretch and normalise one image (reference ``EfficientSam.preprocess`` after
        ``ToTensor``).

        Args:
            image: (H, W, 3) uint8 RGB.

        Returns:
            model input (1, 3, S, S) float32 on the model's device, S = ``input_size``.

        Raises:
            ValueError: ``image`` is not an (H, W, 3) uint8 array.
        """
        check_rgb_image(image)
        x = torch.from_numpy(np.array(image, copy=True)).to(self.device)  # writable copy
        x = x.permute(2, 0, 1).contiguous().float().div(255)[None]
        s = self.input_size
        if tuple(x.shape[-2:]) != (s, s):
            x = F.interpolate(x, (s, s), mode="bilinear", align_corners=False)
        return (x - self.pixel_mean) / self.pixel_std

    @torch.inference_mode()
    def encode_images(self, images: list[np.ndarray],
                      compute_dtype: torch.dtype = torch.float32) -> list[EfficientSamEmbedding]:
        """Run the image encoder once over a batch of images.

        Args:
            images: list of (H_i, W_i, 3) uint8 RGB arrays (sizes may differ).
            compute_dtype: ``torch.float32`` (default, the reference's computation) or
                ``torch.bfloat16`` (matrix products under ``torch.autocast``: an approximation
                for fast presets). The embedding is returned as float32 either way.

        Returns:
            one :class:`EfficientSamEmbedding` per image, embeddings (1, 256, 64, 64) float32.

        Raises:
            ValueError: an image is not (H, W, 3) uint8, or ``compute_dtype`` is not one of
                the two.
        """
        check_compute_dtype(compute_dtype)
        x = torch.cat([self.preprocess(im) for im in images], 0)
        if compute_dtype == torch.float32:
            emb = self.image_encoder(x)
        else:
            with torch.autocast(self.device.type, dtype=compute_dtype):
                emb = self.image_encoder(x).float()
        return [EfficientSamEmbedding(emb[i:i + 1], tuple(im.shape[:2]))
                for i, im in enumerate(images)]

    def encode_image(self, image: np.ndarray,
                     compute_dtype: torch.dtype = torch.float32) -> EfficientSamEmbedding:
        """Image embedding of one (H, W, 3) uint8 RGB image; see :meth:`encode_images`."""
        return self.encode_images([image], compute_dtype)[0]

    # ---------------------------------------------------------------- prompt side
    def to_input_frame(self, coords_xy: torch.Tensor, emb: EfficientSamEmbedding) -> torch.Tensor:
        """Map xy in original-image pixels to the 1024 x 1024 model input (reference
        ``get_rescaled_pts``): ``x * 1024 / W``, ``y * 1024 / H`` in the input's dtype;
        negative coordinates become -1.0 (the padding value).

        ``coords_xy``: (..., 2) float. Returns the same shape and dtype.
        """
        h, w = emb.original_hw
        s = self.input_size
        x, y = coords_xy[..., 0], coords_xy[..., 1]
        return torch.stack([torch.where(x >= 0, x * s / w, -1.0),
                            torch.where(y >= 0, y * s / h, -1.0)], -1)

    def dense_pe(self, emb: EfficientSamEmbedding) -> torch.Tensor:
        """Positional encoding of the embedding grid: (1, 256, h, w) float32."""
        return self.prompt_encoder.dense_positional_encoding(emb.grid_hw)

    def prompt_tokens(self, emb: EfficientSamEmbedding, points_xy: torch.Tensor,
                      labels: torch.Tensor) -> torch.Tensor:
        """Sparse prompt tokens (B, 6, 256) float32 for points in original-image pixels.

        Args:
            emb: from :meth:`encode_image`.
            points_xy: (B, N, 2) float, xy in original-image pixels, N <= 6.
            labels: (B, N) int or float point labels (see
                :mod:`sam_model.efficient_sam_prompt_encoder`).

        Raises:
            ValueError: N > 6.
        """
        pts = self.to_input_frame(points_xy.to(self.device), emb)
        pts, lab = pad_points(pts, labels.to(self.device), self.cfg.decoder.max_num_input_points)
        return self.prompt_encoder(pts, lab)

    @torch.inference_mode()
    def decode(self, emb: EfficientSamEmbedding, points_xy: torch.Tensor | None = None,
               labels: torch.Tensor | None = None, boxes_xyxy: torch.Tensor | None = None,
               multimask_output: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks for a batch of prompts on one image embedding (reference
        ``predict_masks`` without output resizing).

        Args:
            emb: from :meth:`encode_image`.
            points_xy: (B, N, 2) float, xy in original-image pixels, or None.
            labels: (B, N) int: 1 foreground, 0 background, -1 padding (2 / 3 box corners);
                required with points.
            boxes_xyxy: (B, 4) float XYXY in original-image pixels, or None; appended as two
                points labelled 2 (top-left) and 3 (bottom-right), the official box prompt.
            multimask_output: three masks per prompt (tokens 1-3) instead of one (token 0).

        Returns:
            low-resolution mask logits (B, M, 256, 256) float32 and predicted IoU (B, M)
            float32, M = 3 or 1. Map logits to the image with :meth:`upscale_masks`.

        Raises:
            ValueError: no prompt, points without labels, or more than 6 points per prompt
                (boxes count two).
        """
        if points_xy is None and boxes_xyxy is None:
            raise ValueError("EfficientSam.decode: give points_xy or boxes_xyxy")
        if points_xy is not None and labels is None:
            raise ValueError("EfficientSam.decode: points_xy were given without labels")
        pts, lab = [], []
        if points_xy is not None:
            pts.append(points_xy.to(self.device))
            lab.append(labels.to(self.device))
        if boxes_xyxy is not None:
            corners = boxes_xyxy.to(self.device).reshape(-1, 2, 2)
            pts.append(corners.to(pts[0].dtype) if pts else corners)
            corner_labels = torch.tensor([LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT],
                                         device=self.device)
            lab.append(corner_labels.expand(corners.shape[0], 2).to(lab[0].dtype if lab else
                                                                     torch.int64))
        sparse = self.prompt_tokens(emb, torch.cat(pts, 1), torch.cat(lab, 1))
        return self.mask_decoder(emb.embedding, self.dense_pe(emb), sparse, multimask_output)

    # ---------------------------------------------------------------- post-processing
    def upscale_masks(self, low_res: torch.Tensor, emb: EfficientSamEmbedding) -> torch.Tensor:
        """Low-resolution logits (B, M, 256, 256) float32 -> logits (B, M, H, W) float32 at the
        original size: ``F.interpolate(mode="bicubic", align_corners=False)`` straight to
        (H, W) (reference ``predict_masks`` with ``output_h, output_w``)."""
        return F.interpolate(low_res, emb.original_hw, mode="bicubic", align_corners=False)

    def low_res_to_image(self, emb: EfficientSamEmbedding) -> tuple[np.ndarray, np.ndarray]:
        """The official mask post-processing as matrices: ``ay`` (H, 256) and ``ax`` (W, 256)
        float64 such that the image-size logits are ``ay @ low_res_logits @ ax.T``
        (bicubic 256 -> H and 256 -> W, :func:`sam_model.resampling.bicubic_matrix`; equal to
        :meth:`upscale_masks` up to float32 rounding). The weights can be negative."""
        n_low = 4 * emb.grid_hw[0], 4 * emb.grid_hw[1]
        h, w = emb.original_hw
        return bicubic_matrix(n_low[0], h), bicubic_matrix(n_low[1], w)

    @checks_decoder_options
    def point_decoder(self, emb: EfficientSamEmbedding, compute_dtype: torch.dtype = torch.float32,
                      low_res_hw: tuple[int, int] | None = None, *, plain: bool = False,
                      multimask_output: bool = True, chunk_size: int | None = None
                      ) -> "EfficientSamPointDecoder | FactoredPointDecoder":
        """The decoder of single foreground-point prompts for one embedding (the seam).

        Args:
            emb: from :meth:`encode_image`.
            compute_dtype: ``torch.float32`` (the reference's computation) or
                ``torch.bfloat16`` (an approximation; outputs float32): the fast decoder's
                per-prompt work in bfloat16, or the plain mask decoder under ``torch.autocast``.
            low_res_hw: (h, w) part of the 256 x 256 low-res map to return (top-left), default
                the whole map (the image fills the whole model input); the fast decoder rounds
                it up to whole image tokens (4 low-res pixels each).
            plain: the prompt encoder + mask decoder forward per prompt
                (:class:`EfficientSamPointDecoder`) instead of the exact fast rewrite
                (:class:`~sam_model.factored_decoder.FactoredPointDecoder`: image tokens in
                factored form, the predicted-IoU filter before any mask, reject windows from
                their tokens alone). Single-mask output always uses the plain decoder.
            multimask_output: the three multimask outputs (default, as the SAM generator) or
                the single mask.
            chunk_size: prompts per fast-decoder pass (speed only); default
                :func:`sam_model.sam.default_chunk_size` (on a CPU 4 in float32, 8 in bfloat16; a
                whole batch on a GPU).

        Raises:
            ValueError: bad ``compute_dtype``, or ``low_res_hw`` outside the low-res map.
        """
        if plain or not multimask_output:
            return EfficientSamPointDecoder(self, emb, compute_dtype, low_res_hw, multimask_output)
        check_compute_dtype(compute_dtype)
        gh, gw = emb.grid_hw
        nh, nw = low_res_hw or (4 * gh, 4 * gw)
        if not (0 < nh <= 4 * gh and 0 < nw <= 4 * gw):
            raise ValueError(f"low_res_hw {(nh, nw)} is outside the {(4 * gh, 4 * gw)} low-res map")
        token_hw = (min(-(-nh // 4), gh), min(-(-nw // 4), gw))
        with torch.no_grad():
            fast = FactoredGridDecoder(self.mask_decoder, dtype=compute_dtype)
            # EfficientSAM adds no dense prompt to the image embedding.
            ctx = fast.prepare(emb.embedding, self.dense_pe(emb), torch.zeros_like(emb.embedding))

        # The official prompt is the point and five identical invalid points: the fast
        # decoder takes the point token and one padding token standing for all five.
        n_pad = self.cfg.decoder.max_num_input_points - 1
        counts = [1, n_pad] if n_pad else [1]

        def sparse_fn(points_xy: torch.Tensor) -> torch.Tensor:
            labels = torch.full((len(points_xy), 1), LABEL_FOREGROUND, dtype=torch.int64,
                                device=self.device)
            sparse = self.prompt_tokens(emb, points_xy.to(self.device)[:, None, :], labels)
            return sparse[:, :len(counts)]
        chunk = default_chunk_size(self.device, compute_dtype) if chunk_size is None else chunk_size
        return FactoredPointDecoder(fast, ctx, sparse_fn, token_hw, chunk,
                                    token_counts=counts)


class EfficientSamPointDecoder:
    """Plain point decoder: EfficientSAM's prompt encoder and mask decoder forward exactly as
    the official ``predict_masks`` (one foreground point padded with five invalid points), then
    the predicted-IoU filter and the reject windows.

    Built by :meth:`EfficientSam.point_decoder`.
    """

    def __init__(self, model: EfficientSam, emb: EfficientSamEmbedding,
                 compute_dtype: torch.dtype, low_res_hw: tuple[int, int] | None,
                 multimask_output: bool) -> None:
        check_compute_dtype(compute_dtype)
        full = (4 * emb.grid_hw[0], 4 * emb.grid_hw[1])
        low_res_hw = full if low_res_hw is None else tuple(int(v) for v in low_res_hw)
        if not (0 < low_res_hw[0] <= full[0] and 0 < low_res_hw[1] <= full[1]):
            raise ValueError(f"low_res_hw {low_res_hw} is outside the {full} low-res map")
        self.model, self.emb = model, emb
        self.compute_dtype = compute_dtype
        self.low_res_hw = low_res_hw
        self.multimask_output = multimask_output
        self.image_pe = model.dense_pe(emb)

    @torch.inference_mode()
    def decode(self, points_xy: torch.Tensor, iou_thresh: float,
               reject: Sequence[RejectWindow] = ()) -> DecodedMasks:
        """Decode one foreground point per prompt.

        Args:
            points_xy: (B, 2) float64, xy in pixels of the encoded image.
            iou_thresh: keep outputs with predicted IoU > ``iou_thresh``; <= 0 keeps all.
            reject: windows whose low-res logits (of the IoU survivors) drop outputs.

        Returns:
            :class:`DecodedMasks`: low-res logits (K, h, w) float32 (the top-left
            ``low_res_hw`` part of the 256 x 256 map), predicted IoU (K,) float32, prompt
            index (K,) int64, prompt-major then output order.

        Raises:
            ValueError: ``points_xy`` is not (B, 2).
        """
        if points_xy.ndim != 2 or points_xy.shape[1] != 2:
            raise ValueError(f"points_xy must be (B, 2), got {tuple(points_xy.shape)}")
        model, dev = self.model, self.model.device
        b = points_xy.shape[0]
        labels = torch.full((b, 1), LABEL_FOREGROUND, dtype=torch.int64, device=dev)
        sparse = model.prompt_tokens(self.emb, points_xy.to(dev)[:, None, :], labels)
        with torch.autocast(dev.type, dtype=self.compute_dtype,
                            enabled=self.compute_dtype != torch.float32):
            low, iou = model.mask_decoder(self.emb.embedding, self.image_pe, sparse,
                                          self.multimask_output)
        low, iou = low.float(), iou.float()
        m = low.shape[1]
        low = low.reshape(b * m, *low.shape[2:])
        iou = iou.reshape(b * m)
        index = torch.arange(b * m, device=dev)
        if iou_thresh > 0:
            index = index[iou > iou_thresh]
        per_token = low.shape[-2] // self.emb.grid_hw[0], low.shape[-1] // self.emb.grid_hw[1]
        for window in reject:
            if len(index) == 0:
                break
            y0, y1, x0, x1 = window.token_box
            logits = low[index, per_token[0] * y0:per_token[0] * y1,
                         per_token[1] * x0:per_token[1] * x1]
            index = index[~window.reject(logits).to(dev)]
        h, w = self.low_res_hw
        return DecodedMasks(low[index, :h, :w], iou[index], index // m)


def build_efficient_sam(name: str, device: str | torch.device = "cpu") -> EfficientSam:
    """A randomly initialised EfficientSAM of a named size, in eval mode.

    Raises:
        KeyError: ``name`` is not in ``EFFICIENT_SAM_CONFIGS``.
    """
    if name not in EFFICIENT_SAM_CONFIGS:
        raise KeyError(f"unknown EfficientSAM model {name!r}; "
                       f"known: {sorted(EFFICIENT_SAM_CONFIGS)}")
    return EfficientSam(EFFICIENT_SAM_CONFIGS[name]).to(device).eval()


def load_efficient_sam(name_or_path: str | Path, device: str | torch.device = "cpu",
                       arch: str | None = None) -> EfficientSam:
    """Build an EfficientSAM and load official weights (strict keys and shapes).

    Args:
        name_or_path: an official checkpoint file (``efficient_sam_vitt.pt``,
            ``efficient_sam_vits.pt`` or the published ``efficient_sam_vits.pt.zip``), whose
            size is detected from its keys and shapes; or a known name (``efficient_sam_vitt``,
            ``efficient_sam_vits``), looked up in the cache directory under its file name.
            No sha256 of these files is published, so they are never downloaded automatically.
        device: where the model lives.
        arch: optional expected size; a file of the other size is refused.

    Returns:
        :class:`EfficientSam` in eval mode on ``device``.

    Raises:
        CheckpointError: the file is missing (for a known name: where to get it), a folder, or
            unreadable (truncated...).
        CheckpointMismatch: the file is not an EfficientSAM checkpoint, not of the expected
            size, or its keys/shapes differ from the architecture's.
    """
    key = str(name_or_path)
    expected = arch
    if key in EFFICIENT_SAM_CHECKPOINTS and not Path(key).exists():
        path, expected = fetch_checkpoint(key), key  # the user's file in the cache
    else:
        path = Path(key)
    state = read_efficient_sam_state_dict(path)
    found = detect_efficient_sam_architecture(state, source=path.name)
    if expected is not None and found != expected:
        raise CheckpointMismatch(f"{path.name} holds {describe_efficient_sam_architecture(found)} "
                                 f"weights, but {describe_efficient_sam_architecture(expected)} "
                                 "was asked for")
    model = EfficientSam(EFFICIENT_SAM_CONFIGS[found])
    check_state_dict(model, state, path.name)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


__all__ = ["EfficientSam", "EfficientSamEmbedding", "EfficientSamPointDecoder",
           "build_efficient_sam", "load_efficient_sam"]
