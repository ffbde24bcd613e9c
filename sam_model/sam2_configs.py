"""Architecture hyper-parameters of the SAM 2.1 image models, each in exactly one place.

The numbers are those of the official 2.1 configs (``configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml``
of the ``sam2`` package, with the defaults of ``Hiera``, ``FpnNeck``, ``SAM2Base`` and
``MaskDecoder`` filled in, and the post-processing overrides that ``build_sam2`` applies:
dynamic multimask via stability, delta 0.05, threshold 0.98). Ravi et al., "SAM 2: Segment
Anything in Images and Videos" (2024), §4 and Appendix D; Ryali et al., "Hiera" (2023);
Bolya et al., "Window attention is bugged" (2023) for the windowed position embedding.

Only image mode is described: the memory attention, memory encoder and object-pointer modules
of the video model have no configuration here (their checkpoint keys are left unloaded, see
:data:`sam_model.sam2_checkpoints.VIDEO_ONLY_KEY_PREFIXES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .configs import PromptDecoderConfig


@dataclass(frozen=True)
class HieraBlockSpec:
    """One Hiera block, as derived by :meth:`HieraConfig.block_specs`.

    Attributes:
        dim: input token width.
        dim_out: output token width (``dim * dim_mul`` in the first block of a stage).
        num_heads: attention heads.
        window_size: attention window side in input tokens; 0 is global attention.
        q_stride: query max-pooling stride (the first block of stages 2..4), or None.
    """

    dim: int
    dim_out: int
    num_heads: int
    window_size: int
    q_stride: tuple[int, int] | None


@dataclass(frozen=True)
class HieraConfig:
    """The Hiera image-encoder trunk (Ryali et al., 2023, as used by SAM 2, paper §4).

    A 7x7 stride-4 patch embedding, then four stages of multi-scale blocks. The first block of
    stages 2-4 max-pools its queries (Q-pooling, stride 2) and doubles width and heads; its
    shortcut is a linear projection of the normalised input, max-pooled alike. Blocks attend
    within square windows (``window_spec`` per stage) except the ``global_att_blocks``. The
    window of the first block of a stage is the previous stage's (the official code's
    lag by one block); after Q-pooling it is halved.

    Position embedding (Bolya et al., 2023): a learned background embedding of
    ``window_pos_embed_bkg_spatial_size``, resized bicubically to the token grid, plus a learned
    window embedding of ``window_spec[0]`` a side tiled over the grid.

    Attributes:
        embed_dim: stage-1 token width.
        num_heads: stage-1 attention heads.
        stages: blocks per stage.
        global_att_blocks: indexes (over all blocks) of the global-attention blocks.
        window_spec: window side per stage, in that stage's tokens.
        window_pos_embed_bkg_spatial_size: (h, w) of the learned background position embedding.
        q_pool: how many stage transitions pool their queries (3: all).
        q_stride: the query pooling stride (2, 2).
        dim_mul: width multiplier at a stage transition.
        head_mul: head-count multiplier at a stage transition.
        mlp_ratio: hidden width of the block MLP (GELU) as a multiple of the block width.
        patch_kernel_size: patch-embedding convolution kernel side (7).
        patch_stride: patch-embedding stride (4), so a 1024 input gives a 256x256 token grid.
        patch_padding: patch-embedding padding (3).
        norm_eps: LayerNorm epsilon (1e-6).
    """

    embed_dim: int
    num_heads: int
    stages: tuple[int, ...]
    global_att_blocks: tuple[int, ...]
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
    q_pool: int = 3
    q_stride: tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    mlp_ratio: float = 4.0
    patch_kernel_size: int = 7
    patch_stride: int = 4
    patch_padding: int = 3
    norm_eps: float = 1e-6

    @property
    def depth(self) -> int:
        """Total number of blocks."""
        return sum(self.stages)

    @property
    def stage_ends(self) -> tuple[int, ...]:
        """Index of the last block of each stage."""
        return tuple(sum(self.stages[:i + 1]) - 1 for i in range(len(self.stages)))

    @property
    def q_pool_blocks(self) -> tuple[int, ...]:
        """Indexes of the blocks that pool their queries (first block of stages 2..q_pool+1)."""
        return tuple(e + 1 for e in self.stage_ends[:-1])[: self.q_pool]

    def block_specs(self) -> tuple[HieraBlockSpec, ...]:
        """Per-block structure (width, heads, window, pooling), derived as the official
        ``Hiera.__init__`` does."""
        specs = []
        dim, heads, stage = self.embed_dim, self.num_heads, 0
        for i in range(self.depth):
            dim_out = dim
            window = 0 if i in self.global_att_blocks else self.window_spec[stage]
            if i - 1 in self.stage_ends:
                dim_out = int(dim * self.dim_mul)
                heads = int(heads * self.head_mul)
                stage += 1
            specs.append(HieraBlockSpec(dim, dim_out, heads, window,
                                        self.q_stride if i in self.q_pool_blocks else None))
            dim = dim_out
        return tuple(specs)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Output width of each stage, highest resolution first."""
        specs = self.block_specs()
        return tuple(specs[e].dim_out for e in self.stage_ends)


@dataclass(frozen=True)
class FpnNeckConfig:
    """SAM 2's FPN neck (paper §4 "Image encoder"; official ``FpnNeck`` and ``ImageEncoder``).

    A 1x1 lateral convolution per trunk stage to ``d_model`` channels; top-down fusion (sum
    with the nearest-neighbour 2x upsampled coarser level) only for the levels in
    ``fpn_top_down_levels``; levels 0 and 1 are the lateral features alone. The coarsest
    ``scalp`` levels are discarded after fusion (the stride-32 level only feeds level 2).
    Sine position encodings (DETR-style) accompany every level; image mode does not use them.

    Attributes:
        d_model: output channels of every level (256).
        fpn_top_down_levels: levels (0 = stride 4) that receive top-down features.
        fpn_interp_mode: upsampling mode of the top-down path ("nearest").
        fuse_type: "sum" or "avg" of lateral and top-down features.
        scalp: coarsest levels dropped from the output (1).
        pos_num_feats: channels of the sine position encoding (256: 128 for y, then 128 for x).
        pos_temperature: frequency base of the sine encoding (10000).
        pos_normalize: positions normalised to (0, scale] before encoding.
        pos_scale: the normalised range (2 pi).
    """

    d_model: int = 256
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    fpn_interp_mode: str = "nearest"
    fuse_type: str = "sum"
    scalp: int = 1
    pos_num_feats: int = 256
    pos_temperature: float = 10000.0
    pos_normalize: bool = True
    pos_scale: float = 2 * math.pi


@dataclass(frozen=True)
class Sam2DecoderConfig(PromptDecoderConfig):
    """SAM 2's prompt encoder and mask decoder: SAM's (:class:`PromptDecoderConfig`, same
    widths) plus the SAM 2 heads (official ``SAM2Base._build_sam_heads`` and the 2.1 config).

    Attributes:
        use_high_res_features: stride-4 and stride-8 neck levels, projected by ``conv_s0``
            (to 32 channels) and ``conv_s1`` (to 64), are added inside the output upscaling.
        iou_prediction_use_sigmoid: the predicted IoU is the sigmoid of the IoU head.
        pred_obj_scores: an object-score token and head predict whether an object is present.
        pred_obj_scores_mlp: the object-score head is a 3-layer MLP (else one linear layer).
        use_multimask_token_for_obj_ptr: the video object pointer reads the multimask tokens
            (kept for completeness; image mode has no object pointer).
        dynamic_multimask_via_stability: single-mask output falls back to the best multimask
            output (highest predicted IoU) when the single mask's stability score is low.
        dynamic_multimask_stability_delta: logit offset of that stability score (0.05).
        dynamic_multimask_stability_thresh: stability below which it falls back (0.98).
    """

    use_high_res_features: bool = True
    iou_prediction_use_sigmoid: bool = True
    pred_obj_scores: bool = True
    pred_obj_scores_mlp: bool = True
    use_multimask_token_for_obj_ptr: bool = True
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98


@dataclass(frozen=True)
class Sam2Config:
    """A whole SAM 2.1 image model.

    Attributes:
        name: registry name (``sam2.1_hiera_tiny``, ``_small``, ``_base_plus``, ``_large``).
        trunk: :class:`HieraConfig`.
        neck: :class:`FpnNeckConfig`.
        decoder: :class:`Sam2DecoderConfig`.
        image_size: the square model input side in pixels (1024); images are resized to it
            without keeping the aspect ratio.
        backbone_stride: pixels per token of the lowest-resolution level the decoder reads (16).
        pixel_mean: per-channel RGB mean on 0..1 pixel values (ImageNet).
        pixel_std: per-channel RGB standard deviation on 0..1 pixel values (ImageNet).
        mask_threshold: logit above which a pixel is in the mask (0.0).
        directly_add_no_mem_embed: image mode adds the learned ``no_mem_embed`` to the
            lowest-resolution level (official ``SAM2ImagePredictor.set_image``).
        low_res_logit_clamp: the predictor returns low-res logits clamped to +-32.
    """

    name: str
    trunk: HieraConfig
    neck: FpnNeckConfig = field(default_factory=FpnNeckConfig)
    decoder: Sam2DecoderConfig = field(default_factory=Sam2DecoderConfig)
    image_size: int = 1024
    backbone_stride: int = 16
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    mask_threshold: float = 0.0
    directly_add_no_mem_embed: bool = True
    low_res_logit_clamp: float = 32.0


SAM2_CONFIGS: dict[str, Sam2Config] = {
    "sam2.1_hiera_tiny": Sam2Config("sam2.1_hiera_tiny", HieraConfig(
        96, 1, (1, 2, 7, 2), (5, 7, 9), window_pos_embed_bkg_spatial_size=(7, 7))),
    "sam2.1_hiera_small": Sam2Config("sam2.1_hiera_small", HieraConfig(
        96, 1, (1, 2, 11, 2), (7, 10, 13), window_pos_embed_bkg_spatial_size=(7, 7))),
    "sam2.1_hiera_base_plus": Sam2Config("sam2.1_hiera_base_plus", HieraConfig(
        112, 2, (2, 3, 16, 3), (12, 16, 20), window_pos_embed_bkg_spatial_size=(14, 14))),
    "sam2.1_hiera_large": Sam2Config("sam2.1_hiera_large", HieraConfig(
        144, 2, (2, 6, 36, 4), (23, 33, 43), window_spec=(8, 4, 16, 8),
        window_pos_embed_bkg_spatial_size=(7, 7))),
}
