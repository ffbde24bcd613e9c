"""Architecture hyper-parameters of every supported SAM model, each in exactly one place.

The numbers are those of the official checkpoints: SAM ViT-B/L/H (Kirillov et al., 2023, §3 and
Appendix A; official ``build_sam.py``), MobileSAM's TinyViT-5M (Zhang et al., 2023) and HQ-SAM
on those encoders (Ke et al., 2023; official ``segment_anything_hq/build_sam.py``). Frozen
dataclasses, following timm's split between architecture and pretrained-weight metadata (the
weight records live in :mod:`sam_model.checkpoints`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ViTConfig:
    """SAM's ViTDet image encoder (paper Appendix A, "Image encoder").

    Attributes:
        embed_dim: token width of the transformer blocks.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        global_attn_indexes: blocks that attend globally; all others use windowed attention.
        window_size: side of the square attention window in patch tokens (14).
        patch_size: pixels per patch side (16), so a 1024 input gives a 64x64 token grid.
        img_size: the square input side the learned absolute position embedding was trained at.
        mlp_ratio: hidden width of the block MLP as a multiple of ``embed_dim``.
        out_chans: channels of the image embedding after the neck (256).
    """

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    patch_size: int = 16
    img_size: int = 1024
    mlp_ratio: float = 4.0
    out_chans: int = 256


@dataclass(frozen=True)
class TinyViTConfig:
    """MobileSAM's TinyViT-5M image encoder.

    Stage 0 is convolutional (MBConv blocks); stages 1-3 are windowed-attention blocks with a
    depth-wise local convolution. Patch merging halves the resolution after stages 0 and 1 only:
    MobileSAM sets the stride of the merge into the last stage to 1 (``merge_stride1_dims``), so a
    1024 input gives a 64x64 embedding like SAM's ViT.

    Attributes:
        embed_dims: channels of stages 0..3.
        depths: blocks per stage.
        num_heads: attention heads per stage (stage 0 has no attention; its entry is unused).
        window_sizes: attention window side per stage, in tokens.
        mlp_ratio: hidden width of the attention blocks' MLP, as a multiple of the stage width.
        mbconv_expand_ratio: hidden width of the MBConv blocks, as a multiple of the stage width.
        local_conv_size: kernel side of the depth-wise convolution in the attention blocks.
        merge_stride1_dims: output widths whose patch merging uses stride 1 instead of 2.
        img_size: the square input side (1024).
        out_chans: channels of the image embedding after the neck (256).
        num_classes: width of the unused ImageNet classification head kept in the checkpoint.
    """

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    merge_stride1_dims: tuple[int, ...] = (320, 448, 576)
    img_size: int = 1024
    out_chans: int = 256
    num_classes: int = 1000


@dataclass(frozen=True)
class PromptDecoderConfig:
    """Prompt encoder and mask decoder, shared by every SAM size (paper §3, Appendix A).

    Attributes:
        embed_dim: prompt/image embedding width (256).
        image_embedding_size: side of the image embedding grid for a ``img_size`` input (64).
        input_image_size: the square model input side in pixels (1024).
        mask_in_chans: hidden channels of the mask-hint downscaler (16).
        num_multimask_outputs: masks predicted for an ambiguous prompt (3), plus one single mask.
        transformer_depth: two-way transformer blocks (2).
        transformer_mlp_dim: MLP width inside the two-way blocks (2048).
        transformer_num_heads: attention heads (8).
        attention_downsample_rate: internal width divisor of the token<->image attentions (2).
        iou_head_depth: layers of the predicted-IoU MLP head (3).
        iou_head_hidden_dim: hidden width of the predicted-IoU head (256).
    """

    embed_dim: int = 256
    image_embedding_size: int = 64
    input_image_size: int = 1024
    mask_in_chans: int = 16
    num_multimask_outputs: int = 3
    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_num_heads: int = 8
    attention_downsample_rate: int = 2
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


@dataclass(frozen=True)
class SamConfig:
    """A whole SAM model: one image encoder config plus the shared prompt/decoder config.

    Attributes:
        name: registry name (``vit_b``, ``vit_l``, ``vit_h``, ``mobile_sam``).
        encoder: :class:`ViTConfig` or :class:`TinyViTConfig`.
        decoder: :class:`PromptDecoderConfig`.
        pixel_mean: per-channel RGB mean in 0..255 pixel units used to normalise the input.
        pixel_std: per-channel RGB standard deviation in 0..255 pixel units.
        mask_threshold: logit above which a pixel is in the mask (0.0).
    """

    name: str
    encoder: ViTConfig | TinyViTConfig
    decoder: PromptDecoderConfig = field(default_factory=PromptDecoderConfig)
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    mask_threshold: float = 0.0


MODEL_CONFIGS: dict[str, SamConfig] = {
    "vit_b": SamConfig("vit_b", ViTConfig(768, 12, 12, (2, 5, 8, 11))),
    "vit_l": SamConfig("vit_l", ViTConfig(1024, 24, 16, (5, 11, 17, 23))),
    "vit_h": SamConfig("vit_h", ViTConfig(1280, 32, 16, (7, 15, 23, 31))),
    "mobile_sam": SamConfig("mobile_sam", TinyViTConfig()),
}


@dataclass(frozen=True)
class SamHQConfig:
    """A whole HQ-SAM model (Ke et al., 2023, "Segment Anything in High Quality"): a SAM image
    encoder, SAM's prompt encoder and SAM's mask decoder with the HQ additions (HQ output token
    and its MLP, global-local feature fusion; paper §3.2).

    Attributes:
        name: registry name (``sam_hq_vit_b``, ``sam_hq_vit_l``, ``sam_hq_vit_h``,
            ``sam_hq_vit_tiny``).
        encoder: :class:`ViTConfig` (ViT-B/L/H, as SAM's) or :class:`TinyViTConfig` (the light
            HQ-SAM, MobileSAM's TinyViT-5M).
        interm_dim: channels of the early-layer encoder feature that ``compress_vit_feat``
            takes (the official ``vit_dim``): the ViT width for ViT-B/L/H (first
            global-attention block output), 160 for TinyViT (stage-1 output).
        decoder: :class:`PromptDecoderConfig`, shared with SAM.
        pixel_mean: per-channel RGB mean in 0..255 pixel units used to normalise the input.
        pixel_std: per-channel RGB standard deviation in 0..255 pixel units.
        mask_threshold: logit above which a pixel is in the mask (0.0).

    Raises:
        ValueError: ``interm_dim`` is not the channel count of the encoder's early feature.
    """

    name: str
    encoder: ViTConfig | TinyViTConfig
    interm_dim: int
    decoder: PromptDecoderConfig = field(default_factory=PromptDecoderConfig)
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        enc = self.encoder
        early = enc.embed_dims[2] if isinstance(enc, TinyViTConfig) else enc.embed_dim
        if self.interm_dim != early:
            raise ValueError(f"SamHQConfig {self.name}: interm_dim {self.interm_dim} != "
                             f"{early} channels of the encoder's early-layer feature")


SAM_HQ_CONFIGS: dict[str, SamHQConfig] = {
    "sam_hq_vit_b": SamHQConfig("sam_hq_vit_b", MODEL_CONFIGS["vit_b"].encoder, 768),
    "sam_hq_vit_l": SamHQConfig("sam_hq_vit_l", MODEL_CONFIGS["vit_l"].encoder, 1024),
    "sam_hq_vit_h": SamHQConfig("sam_hq_vit_h", MODEL_CONFIGS["vit_h"].encoder, 1280),
    "sam_hq_vit_tiny": SamHQConfig("sam_hq_vit_tiny", MODEL_CONFIGS["mobile_sam"].encoder, 160),
}


# ---------------------------------------------------------------------------- EfficientSAM
# Xiong et al., "EfficientSAM: Leveraged Masked Image Pretraining for Efficient Segment
# Anything" (CVPR 2024), §3.2 and §4.1; numbers from the official ``build_efficient_sam``.


@dataclass(frozen=True)
class PlainViTConfig:
    """EfficientSAM's plain ViT image encoder (SAMI-pretrained ViT-Tiny / ViT-Small): every
    block attends globally, no relative position terms; a neck like SAM's.

    Attributes:
        embed_dim: token width of the transformer blocks (192 ViT-T, 384 ViT-S).
        num_heads: attention heads per block (3 ViT-T, 6 ViT-S).
        depth: number of transformer blocks (12).
        patch_size: pixels per patch side (16): a 1024 input gives a 64x64 token grid.
        img_size: the square model input side in pixels (1024).
        pretrain_img_size: input side the learned absolute position embedding was trained at
            (224, a 14x14 grid plus a class-token entry); it is resized bicubically to the
            token grid at every forward pass.
        mlp_ratio: hidden width of the block MLP as a multiple of ``embed_dim``.
        out_chans: channels of the image embedding after the neck (256).
    """

    embed_dim: int
    num_heads: int
    depth: int = 12
    patch_size: int = 16
    img_size: int = 1024
    pretrain_img_size: int = 224
    mlp_ratio: float = 4.0
    out_chans: int = 256


@dataclass(frozen=True)
class EfficientSamDecoderConfig:
    """EfficientSAM's prompt encoder and mask decoder (the same for ViT-T and ViT-S).

    Attributes:
        embed_dim: prompt/image embedding width (256).
        image_embedding_size: side of the image embedding grid for an ``input_image_size``
            input (64).
        input_image_size: the square model input side in pixels (1024) that point
            coordinates are rescaled to.
        max_num_input_points: points per prompt the decoder always sees (6): fewer are padded
            with invalid points (label -1).
        num_multimask_outputs: masks predicted for an ambiguous prompt (3), plus one single mask.
        transformer_depth: two-way transformer blocks (2).
        transformer_mlp_dim: MLP width inside the two-way blocks (2048).
        transformer_num_heads: attention heads (8).
        attention_downsample_rate: internal width divisor of the token<->image attentions (2).
        iou_head_depth: linear layers of the predicted-IoU head (3: two hidden + output).
        iou_head_hidden_dim: hidden width of the predicted-IoU head (256).
        hypernetwork_depth: linear layers of each mask token's hypernetwork MLP (3).
        upscaling_layer_dims: output channels of the transposed-convolution upscaling stages
            (64, 32): 4x upscaling, so a 64x64 embedding gives 256x256 low-res masks.
    """

    embed_dim: int = 256
    image_embedding_size: int = 64
    input_image_size: int = 1024
    max_num_input_points: int = 6
    num_multimask_outputs: int = 3
    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_num_heads: int = 8
    attention_downsample_rate: int = 2
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    hypernetwork_depth: int = 3
    upscaling_layer_dims: tuple[int, ...] = (64, 32)


@dataclass(frozen=True)
class EfficientSamConfig:
    """A whole EfficientSAM model.

    Attributes:
        name: registry name (``efficient_sam_vitt``, ``efficient_sam_vits``).
        encoder: :class:`PlainViTConfig`.
        decoder: :class:`EfficientSamDecoderConfig`.
        pixel_mean: per-channel RGB mean in 0..1 units (the image is divided by 255 first, as
            torchvision's ``ToTensor`` in the official examples).
        pixel_std: per-channel RGB standard deviation in 0..1 units.
        mask_threshold: logit above which a pixel is in the mask (0.0).
    """

    name: str
    encoder: PlainViTConfig
    decoder: EfficientSamDecoderConfig = field(default_factory=EfficientSamDecoderConfig)
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    mask_threshold: float = 0.0


EFFICIENT_SAM_CONFIGS: dict[str, EfficientSamConfig] = {
    "efficient_sam_vitt": EfficientSamConfig("efficient_sam_vitt", PlainViTConfig(192, 3)),
    "efficient_sam_vits": EfficientSamConfig("efficient_sam_vits", PlainViTConfig(384, 6)),
}
