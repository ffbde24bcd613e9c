"""The SAM model: pre-processing, the image encoder, the prompt encoder and the mask decoder.

Stateless: :meth:`Sam.encode_image` returns an :class:`ImageEmbedding` (the embedding plus the
sizes needed to map coordinates), and :meth:`Sam.decode` takes that embedding with prompts in
original-image pixels. There is no hidden "current image".

Pre-processing follows the reference exactly, so that outputs match it: the longest image side
is resized to the model input size (1024) with PIL's bilinear filter, the new size rounded as
``int(side * scale + 0.5)``; pixels are normalised by the ImageNet mean/std (0..255 units) and
zero-padded at the bottom/right to 1024x1024.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from .family_model import FamilyModel, checks_decoder_options
from .configs import SamConfig, TinyViTConfig
from .factored_decoder import FactoredGridDecoder, FactoredPointDecoder
from .mask_decoder import MULTIMASK, SINGLE_MASK, MaskDecoder, upscale_mask_logits
from .point_decoder import PlainPointDecoder, PointDecoder
from .resampling import sam_postprocess_matrices
from .prompt_encoder import PromptEncoder
from .tiny_vit import TinyViTImageEncoder
from .vit import ViTImageEncoder


@dataclass(frozen=True)
class ImageEmbedding:
    """One image's encoder output and the geometry that maps its coordinates.

    Attributes:
        embedding: (1, 256, h, w) float32 image embedding (h = w = 64 for a 1024 input).
        original_hw: (H, W) of the image given to :meth:`Sam.encode_image`, pixels.
        input_hw: (h', w') of the resized image inside the padded model input, pixels.
    """

    embedding: torch.Tensor
    original_hw: tuple[int, int]
    input_hw: tuple[int, int]

    @property
    def grid_hw(self) -> tuple[int, int]:
        """(h, w) of the embedding grid."""
        return tuple(self.embedding.shape[-2:])


COMPUTE_DTYPES = (torch.float32, torch.bfloat16)
COMPUTE_DTYPE_NAMES = ("float32", "bfloat16", "auto")
# Prompts per fast-decoder pass on a GPU: a whole generator batch (points_per_batch <= 1024).
GPU_CHUNK_SIZE = 1024


def default_chunk_size(device: torch.device, compute_dtype: torch.dtype) -> int:
    """Prompts per fast-decoder pass when not given: on a CPU 4 in float32 and 8 in bfloat16
    (intermediates that stay in cache; docs/benchmarks.md), elsewhere :data:`GPU_CHUNK_SIZE`
    (a whole batch per pass: a GPU needs large kernels, not cache-sized ones)."""
    if device.type == "cpu":
        return 4 if compute_dtype == torch.float32 else 8
    return GPU_CHUNK_SIZE


def check_compute_dtype(dtype: torch.dtype) -> None:
    """Raise ``ValueError`` unless ``dtype`` is one of :data:`COMPUTE_DTYPES` (float32, the
    reference's arithmetic, or bfloat16, the fast approximation)."""
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype must be torch.float32 or torch.bfloat16, got {dtype!r}")


def resolve_compute_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """A compute-dtype name -> the torch dtype used on ``device``: ``"float32"`` and
    ``"bfloat16"`` as named; ``"auto"`` is bfloat16 where :func:`has_native_bfloat16`, else
    float32 (bfloat16 emulated in software is slower than float32).

    Raises:
        ValueError: a name not in :data:`COMPUTE_DTYPE_NAMES`.
    """
    if name not in COMPUTE_DTYPE_NAMES:
        raise ValueError(f"compute_dtype must be float32, bfloat16 or auto, got {name!r}")
    if name == "auto":
        return torch.bfloat16 if has_native_bfloat16(device) else torch.float32
    return getattr(torch, name)


def has_native_bfloat16(device: str | torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware, so that ``compute_dtype``
    bfloat16 is a speed-up rather than an emulation.

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: the AVX512-BF16 or AMX-BF16 instruction
    sets, read from ``/proc/cpuinfo`` on Linux (on a 2-core AMD EPYC with AVX512-BF16, bfloat16
    matrix products ran 3.5-5x faster than float32; CPUs without these instructions emulate
    bfloat16 and are slower than float32), elsewhere oneDNN's own bfloat16 check. Other
    devices: False.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resized_hw(original_hw: tuple[int, int], long_side: int) -> tuple[int, int]:
    """Size after resizing the longest side to ``long_side``: ``int(side * scale + 0.5)``
    with ``scale = long_side / max(H, W)`` (reference ``ResizeLongestSide``)."""
    h, w = original_hw
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def check_rgb_image(image: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``image`` is an (H, W, 3) uint8 array with H, W >= 1."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array (H, W, 3) uint8 RGB, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must have shape (H, W, 3) RGB, got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0..255), got dtype {image.dtype}")


def preprocess_image(image: np.ndarray, input_size: int, pixel_mean: torch.Tensor,
                     pixel_std: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize, normalise and pad one image to the square model input (reference
    ``ResizeLongestSide`` + ``Sam.preprocess``; see the module docstring).

    Args:
        image: (H, W, 3) uint8 RGB.
        input_size: side S of the square, padded model input in pixels.
        pixel_mean, pixel_std: (3, 1, 1) float32 in 0..255 units, on the target device.

    Returns:
        model input (1, 3, S, S) float32 on ``pixel_mean``'s device and the resized size
        (h', w') before padding.

    Raises:
        ValueError: ``image`` is not an (H, W, 3) uint8 array.
    """
    check_rgb_image(image)
    h, w = resized_hw(image.shape[:2], input_size)
    resized = np.array(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    x = torch.from_numpy(resized).to(pixel_mean.device).permute(2, 0, 1).float()
    x = (x - pixel_mean) / pixel_std
    x = nn.functional.pad(x, (0, input_size - w, 0, input_size - h))
    return x[None], (h, w)


def coords_to_input_frame(coords_xy: torch.Tensor, original_hw: tuple[int, int],
                   input_hw: tuple[int, int]) -> torch.Tensor:
    """Map xy in original-image pixels to the model-input frame (float64 arithmetic, like
    the reference's numpy ``apply_coords``): x * (w'/W), y * (h'/H).

    ``coords_xy``: (..., 2) float. Returns the same shape, float64 (float32 on devices
    without float64).
    """
    (oh, ow), (ih, iw) = original_hw, input_hw
    dtype = torch.float64 if coords_xy.device.type not in ("mps",) else torch.float32
    scale = torch.tensor([iw / ow, ih / oh], dtype=dtype, device=coords_xy.device)
    return coords_xy.to(dtype) * scale


def input_size_view(model: nn.Module, size: int) -> nn.Module:
    """The same network (shared weights, no copy) run at another model-input size: a
    shallow copy of ``model`` whose ``cfg`` (``encoder.img_size``, ``decoder.input_image_size``,
    ``decoder.image_embedding_size``) and prompt encoder follow ``size``. ``model`` needs
    ``cfg.encoder``, ``cfg.decoder`` and ``prompt_encoder`` (SAM and HQ-SAM); see
    :meth:`Sam.with_input_size` for what changes with the size.

    Raises:
        ValueError: ``size`` is not an integer multiple of 16 in [256, 4096].
    """
    if isinstance(size, bool) or not isinstance(size, int) or size % 16 or not 256 <= size <= 4096:
        raise ValueError(f"input size must be a multiple of 16 in [256, 4096], got {size!r}")
    if size == model.cfg.encoder.img_size:
        return model
    enc = dataclasses.replace(model.cfg.encoder, img_size=size)
    dec = dataclasses.replace(model.cfg.decoder, input_image_size=size,
                              image_embedding_size=size // 16)
    view = copy.copy(model)  # shares _modules/_parameters/_buffers: the same weights
    view.__dict__["_modules"] = dict(model._modules)
    view.cfg = dataclasses.replace(model.cfg, encoder=enc, decoder=dec)
    prompt_encoder = copy.copy(model.prompt_encoder)
    prompt_encoder.cfg = dec
    view._modules["prompt_encoder"] = prompt_encoder
    return view


class Sam(FamilyModel):
    """Segment Anything: image encoder + prompt encoder + mask decoder (official key layout).

    Args:
        cfg: the architecture (:data:`sam_model.configs.MODEL_CONFIGS`).
    """

    family = "sam"

    def __init__(self, cfg: SamConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if isinstance(cfg.encoder, TinyViTConfig):
            self.image_encoder: nn.Module = TinyViTImageEncoder(cfg.encoder)
        else:
            self.image_encoder = ViTImageEncoder(cfg.encoder)
        self.prompt_encoder = PromptEncoder(cfg.decoder)
        self.mask_decoder = MaskDecoder(cfg.decoder)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(-1, 1, 1), False)

    @property
    def input_size(self) -> int:
        """Side of the square, padded model input in pixels (1024; see :meth:`with_input_size`)."""
        return self.cfg.encoder.img_size

    def with_input_size(self, size: int) -> "Sam":
        """The same network (shared weights, no copy) run at another model-input size.

        The longest image side is resized to ``size`` pixels instead of 1024, so the image
        embedding grid is ``size // 16`` tokens a side, prompts are encoded in the ``size``
        frame and the low-res masks are ``size // 4`` a side. TinyViT (MobileSAM) has no
        absolute position embedding and needs nothing else; ViT encoders interpolate theirs
        bicubically (:meth:`ViTImageEncoder.position_embedding`). Encoding a small image at
        more than 1024 pixels gives small objects more image tokens (the issue's "larger
        input size" lever; muggled_sam documents that SAMv1 tolerates resized inputs); the
        decoder's per-prompt cost grows with the grid, (size / 1024)**2.

        Args:
            size: the new square input side in pixels, a multiple of 16, >= 256.

        Returns:
            ``self`` when ``size`` is already the input size, else a new :class:`Sam` that
            shares every module and parameter with ``self``.

        Raises:
            ValueError: ``size`` is not an integer multiple of 16 in [256, 4096].
        """
        return input_size_view(self, size)

    # ---------------------------------------------------------------- image side
    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """Resize, normalise and pad one image.

        Args:
            image: (H, W, 3) uint8 RGB.

        Returns:
            model input (1, 3, S, S) float32 on the model's device (S = ``input_size``) and the
            resized size (h', w') before padding.

        Raises:
            ValueError: ``image`` is not an (H, W, 3) uint8 array.
        """
        return preprocess_image(image, self.input_size, self.pixel_mean, self.pixel_std)

    @torch.inference_mode()
    def encode_images(self, images: list[np.ndarray],
                      compute_dtype: torch.dtype = torch.float32) -> list[ImageEmbedding]:
        """Run the image encoder once over a batch of images.

        Args:
            images: list of (H_i, W_i, 3) uint8 RGB arrays (sizes may differ).
            compute_dtype: ``torch.float32`` (default, the reference's computation) or
                ``torch.bfloat16``: the encoder's matrix products and convolutions run under
                ``torch.autocast`` in bfloat16 (not the reference's numbers: an approximation
                for fast presets, about 1.5x faster on CPUs with AVX512-BF16; see
                docs/benchmarks.md). The embedding is returned as float32 either way.

        Returns:
            one :class:`ImageEmbedding` per image, embeddings (1, 256, 64, 64) float32.

        Raises:
            ValueError: an image is not (H, W, 3) uint8, or ``compute_dtype`` is not one of
                the two.
        """
        check_compute_dtype(compute_dtype)
        inputs, sizes = zip(*(self.preprocess(im) for im in images))
        if compute_dtype == torch.float32:
            emb = self.image_encoder(torch.cat(inputs, 0))
        else:
            with torch.autocast(self.device.type, dtype=compute_dtype):
                emb = self.image_encoder(torch.cat(inputs, 0)).float()
        return [ImageEmbedding(emb[i:i + 1], tuple(im.shape[:2]), sizes[i])
                for i, im in enumerate(images)]

    def encode_image(self, image: np.ndarray,
                     compute_dtype: torch.dtype = torch.float32) -> ImageEmbedding:
        """Image embedding of one (H, W, 3) uint8 RGB image; see :meth:`encode_images`."""
        return self.encode_images([image], compute_dtype)[0]

    # ---------------------------------------------------------------- prompt side
    def to_input_frame(self, coords_xy: torch.Tensor, emb: ImageEmbedding) -> torch.Tensor:
        """Map xy in original-image pixels to the model-input frame (float64 arithmetic, like
        the reference's numpy ``apply_coords``): x * (w'/W), y * (h'/H).

        ``coords_xy``: (..., 2) float. Returns the same shape, float64 (float32 on devices
        without float64).
        """
        return coords_to_input_frame(coords_xy, emb.original_hw, emb.input_hw)

    def dense_pe(self, emb: ImageEmbedding) -> torch.Tensor:
        """Positional encoding of the embedding grid: (1, 256, h, w) float32."""
        return self.prompt_encoder.dense_positional_encoding(emb.grid_hw)

    @torch.inference_mode()
    def decode(self, emb: ImageEmbedding, points_xy: torch.Tensor | None = None,
               labels: torch.Tensor | None = None, boxes_xyxy: torch.Tensor | None = None,
               mask_input: torch.Tensor | None = None, multimask_output: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks for a batch of prompts on one image embedding.

        Args:
            emb: from :meth:`encode_image`.
            points_xy: (B, N, 2) float, xy in original-image pixels, or None.
            labels: (B, N) int, 1 foreground / 0 background / -1 padding; required with points.
            boxes_xyxy: (B, 4) float XYXY in original-image pixels, or None.
            mask_input: (B, 1, 256, 256) float32 low-resolution logits from an earlier call, or None.
            multimask_output: three masks per prompt (tokens 1-3) instead of one (token 0).

        Returns:
            low-resolution mask logits (B, M, 256, 256) float32 and predicted IoU (B, M)
            float32, M = 3 or 1. Map logits to the image with :meth:`upscale_masks`.

        Raises:
            ValueError: no prompt, or points without labels.
        """
        dev = self.device
        pts = self.to_input_frame(points_xy.to(dev), emb) if points_xy is not None else None
        lab = labels.to(dev) if labels is not None else None
        box = self.to_input_frame(boxes_xyxy.to(dev).reshape(-1, 2, 2), emb).reshape(-1, 4) \
            if boxes_xyxy is not None else None
        sparse, dense = self.prompt_encoder(pts, lab, box, mask_input, emb.grid_hw)
        return self.mask_decoder(emb.embedding, self.dense_pe(emb), sparse, dense,
                                 multimask_output)

    def low_res_to_image(self, emb: ImageEmbedding) -> tuple[np.ndarray, np.ndarray]:
        """The mask post-processing (:meth:`upscale_masks`) as two resampling matrices:
        ``ay`` (H, n_low) and ``ax`` (W, n_low) float64 with image-size logits
        ``ay @ low_res @ ax.T`` (:func:`sam_model.resampling.sam_postprocess_matrices`)."""
        return sam_postprocess_matrices(4 * emb.grid_hw[0], self.input_size, emb.input_hw,
                                        emb.original_hw)

    @checks_decoder_options
    def point_decoder(self, emb: ImageEmbedding, compute_dtype: torch.dtype = torch.float32,
                      low_res_hw: tuple[int, int] | None = None, *, chunk_size: int | None = None,
                      plain: bool = False) -> PointDecoder:
        """The decoder of single-point prompts on ``emb`` (the :mod:`sam_model.point_decoder`
        seam): multimask output (tokens 1-3), as the reference generator decodes its grid.

        Args:
            emb: from :meth:`encode_image`.
            compute_dtype: float32 (the reference's arithmetic) or bfloat16 (fast path only).
            low_res_hw: the top-left part of the low-res map needed (default: all of it);
                rounded up to whole image tokens (4 low-res pixels each).
            chunk_size: prompts per decoder pass; default on a CPU 4 in float32, 8 in
                bfloat16 (intermediates that stay in cache), elsewhere ``GPU_CHUNK_SIZE``
                (a whole batch per pass: a GPU needs large kernels, not cache-sized ones).
            plain: the prompt encoder + :class:`MaskDecoder` forward per prompt
                (:class:`PlainPointDecoder`, float32) instead of the exact fast rewrite
                (:class:`~sam_model.factored_decoder.FactoredPointDecoder`).

        Raises:
            ValueError: ``compute_dtype`` is not float32 or bfloat16.
        """
        check_compute_dtype(compute_dtype)
        gh, gw = emb.grid_hw
        nh, nw = low_res_hw or (4 * gh, 4 * gw)
        token_hw = (min(-(-nh // 4), gh), min(-(-nw // 4), gw))
        if plain:
            def decode_fn(points_xy: torch.Tensor, labels: torch.Tensor):
                return self.decode(emb, points_xy, labels, multimask_output=True)
            return PlainPointDecoder(decode_fn, (4 * token_hw[0], 4 * token_hw[1]), self.device)
        chunk = default_chunk_size(self.device, compute_dtype) if chunk_size is None else chunk_size
        with torch.no_grad():
            fast = FactoredGridDecoder(self.mask_decoder, dtype=compute_dtype)
            no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)  # (1, C, 1, 1)
            ctx = fast.prepare(emb.embedding, self.dense_pe(emb), no_mask.expand_as(emb.embedding))

        def sparse_fn(points_xy: torch.Tensor) -> torch.Tensor:
            labels = torch.ones(len(points_xy), 1, dtype=torch.int64, device=self.device)
            pts = self.to_input_frame(points_xy[:, None, :].to(self.device), emb)
            return self.prompt_encoder(pts, labels, None, None, emb.grid_hw)[0]
        return FactoredPointDecoder(fast, ctx, sparse_fn, token_hw, chunk)

    def upscale_masks(self, low_res: torch.Tensor, emb: ImageEmbedding) -> torch.Tensor:
        """Low-resolution logits (B, M, 256, 256) -> logits (B, M, H, W) at the original size
        (reference ``postprocess_masks``)."""
        return upscale_mask_logits(low_res, self.input_size, emb.input_hw, emb.original_hw)


__all__ = ["Sam", "ImageEmbedding", "resized_hw", "check_rgb_image", "resolve_compute_dtype",
           "has_native_bfloat16", "default_chunk_size", "COMPUTE_DTYPE_NAMES", "MULTIMASK", "SINGLE_MASK"]
