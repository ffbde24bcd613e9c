"""SAM 2's mask decoder (SAM 2 paper §4 "Prompt encoder and mask decoder", Appendix D; official
``sam2.modeling.sam.mask_decoder.MaskDecoder`` as configured by the 2.1 checkpoints).

SAM's decoder (:mod:`sam_model.mask_decoder`) with three additions:

- an **object-score token** ahead of the IoU and mask tokens (token order: object score, IoU,
  4 mask tokens, then the prompt tokens); its 3-layer MLP head gives one object-score logit per
  prompt (whether the object is present);
- **high-resolution skip features**: the stride-8 and stride-4 neck levels, projected by
  ``conv_s1`` (256 -> 64 channels) and ``conv_s0`` (256 -> 32), are added inside the output
  upscaling, after each transposed convolution and before its norm/activation:
  ``up = GELU(LN(dc1(x) + s1)); up = GELU(dc2(up) + s0)``. The projections depend on the image
  only, so the model applies them once per image (official ``SAM2Base.forward_image``);
- the predicted IoU is the **sigmoid** of the IoU head, and single-mask output selects
  **dynamically via stability**: token 0's mask is used when its stability score (IoU of the
  masks at logits > +delta and > -delta, delta 0.05) is >= 0.98, otherwise the multimask output
  (tokens 1-3) with the highest predicted IoU.

Layout: official key names (``transformer``, ``iou_token``, ``mask_tokens``,
``obj_score_token``, ``output_upscaling``, ``conv_s0``, ``conv_s1``,
``output_hypernetworks_mlps``, ``iou_prediction_head``, ``pred_obj_score_head``); the two-way
transformer is SAM's with ``mlp.layers.{0,1}`` keys.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import MLP, LayerNorm2d
from .sam2_configs import Sam2DecoderConfig
from .two_way_transformer import TwoWayTransformer


def mask_stability_scores(mask_logits: torch.Tensor, delta: float) -> torch.Tensor:
    """Stability score used by the dynamic multimask selection (official
    ``MaskDecoder._get_stability_scores``).

    Args:
        mask_logits: (..., h, w) float logits.
        delta: logit offset.

    Returns:
        (...) float32: ``#(logits > delta) / #(logits > -delta)``, 1.0 where the second count
        is 0. Counts are taken in int64 and divided in float32, as the reference does.
    """
    flat = mask_logits.flatten(-2)
    area_i = (flat > delta).sum(-1).float()
    area_u = (flat > -delta).sum(-1).float()
    return torch.where(area_u > 0, area_i / area_u, 1.0)


def select_single_mask_by_stability(mask_logits: torch.Tensor, iou_pred: torch.Tensor,
                                    delta: float, thresh: float
                                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-mask output with SAM 2's dynamic fallback (official
    ``MaskDecoder._dynamic_multimask_via_stability``).

    Args:
        mask_logits: (B, 4, h, w) float32 logits of all four mask tokens.
        iou_pred: (B, 4) float32 predicted IoU of all four mask tokens.
        delta: stability-score logit offset (0.05).
        thresh: token 0 is kept when its stability score is >= ``thresh`` (0.98).

    Returns:
        logits (B, 1, h, w) and predicted IoU (B, 1), float32: token 0's where stable, else
        those of the multimask token (1-3) with the highest predicted IoU (first on ties).
    """
    best = iou_pred[:, 1:].argmax(-1)
    rows = torch.arange(iou_pred.shape[0], device=iou_pred.device)
    best_logits = mask_logits[:, 1:][rows, best][:, None]
    best_iou = iou_pred[:, 1:][rows, best][:, None]
    stable = mask_stability_scores(mask_logits[:, 0:1], delta) >= thresh  # (B, 1)
    logits = torch.where(stable[..., None, None], mask_logits[:, 0:1], best_logits)
    return logits, torch.where(stable, iou_pred[:, 0:1], best_iou)


class Sam2MaskDecoder(nn.Module):
    """SAM 2's mask decoder (see module docstring), official state-dict layout.

    Args:
        cfg: :class:`Sam2DecoderConfig`.
    """

    def __init__(self, cfg: Sam2DecoderConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.cfg = cfg
        self.transformer = TwoWayTransformer(cfg.transformer_depth, dim, cfg.transformer_num_heads,
                                             cfg.transformer_mlp_dim, cfg.attention_downsample_rate,
                                             mlp_layout="layers")
        self.num_mask_tokens = cfg.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        if cfg.pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        if cfg.use_high_res_features:
            self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, cfg.iou_head_hidden_dim, self.num_mask_tokens,
                                       cfg.iou_head_depth)
        if cfg.pred_obj_scores:
            self.pred_obj_score_head = MLP(dim, dim, 1, 3) if cfg.pred_obj_scores_mlp \
                else nn.Linear(dim, 1)

    @property
    def first_mask_token(self) -> int:
        """Index of mask token 0 among the output tokens (2 with the object-score token)."""
        return 2 if self.cfg.pred_obj_scores else 1

    def project_high_res_features(self, level0: torch.Tensor, level1: torch.Tensor
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """``conv_s0`` / ``conv_s1`` of the neck's stride-4 / stride-8 levels: (B, 256, 4h, 4w)
        -> (B, 32, 4h, 4w) and (B, 256, 2h, 2w) -> (B, 64, 2h, 2w) float32 (per image, once).

        Raises:
            ValueError: the config has no high-resolution features.
        """
        if not self.cfg.use_high_res_features:
            raise ValueError("Sam2MaskDecoder: use_high_res_features is off in this config")
        return self.conv_s0(level0), self.conv_s1(level1)

    def output_tokens(self) -> torch.Tensor:
        """(6, C) the output tokens ahead of the prompt tokens: object score (with
        ``pred_obj_scores``), IoU, then the 4 mask tokens."""
        parts = [self.iou_token.weight, self.mask_tokens.weight]
        if self.cfg.pred_obj_scores:
            parts.insert(0, self.obj_score_token.weight)
        return torch.cat(parts, 0)

    def run_transformer(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                        sparse: torch.Tensor, dense: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-way transformer over the output tokens + prompt tokens and the image embedding.

        Args:
            image_embedding: (1 or B, C, h, w) float32 (lowest level, ``no_mem_embed`` added).
            image_pe: (1, C, h, w) float32 grid positional encoding.
            sparse: (B, Np, C) float32 prompt tokens.
            dense: (1 or B, C, h, w) float32 dense prompt embedding.

        Returns:
            tokens (B, 6 + Np, C) (object score, IoU, 4 mask tokens, prompts) and image tokens
            (B, h*w, C), float32.
        """
        b = sparse.shape[0]
        out_tokens = self.output_tokens()
        tokens = torch.cat([out_tokens[None].expand(b, -1, -1), sparse], 1)
        return self.transformer(image_embedding + dense, image_pe, tokens)

    def predict_iou(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens``: (B, Nt, C) -> predicted IoU (B, 4) float32 of all mask tokens (sigmoid
        of the head with ``iou_prediction_use_sigmoid``)."""
        iou = self.iou_prediction_head(tokens[:, self.first_mask_token - 1])
        return iou.sigmoid() if self.cfg.iou_prediction_use_sigmoid else iou

    def predict_object_score(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens``: (B, Nt, C) -> object-score logits (B, 1) float32 (10.0 without an
        object-score head, as the reference: "object present")."""
        if not self.cfg.pred_obj_scores:
            return tokens.new_full((tokens.shape[0], 1), 10.0)
        return self.pred_obj_score_head(tokens[:, 0])

    def upscale(self, image_tokens: torch.Tensor, grid_hw: tuple[int, int],
                high_res_features: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Output upscaling with the high-resolution skip features.

        Args:
            image_tokens: (B, h*w, C) transformer output image tokens.
            grid_hw: (h, w).
            high_res_features: (feat_s0 (1 or B, C/8, 4h, 4w), feat_s1 (1 or B, C/4, 2h, 2w))
                from :meth:`project_high_res_features`; required with
                ``use_high_res_features``.

        Returns:
            (B, C/8, 4h, 4w) float32.

        Raises:
            ValueError: high-resolution features are required but missing.
        """
        b, _, c = image_tokens.shape
        x = image_tokens.transpose(1, 2).reshape(b, c, *grid_hw)
        if not self.cfg.use_high_res_features:
            return self.output_upscaling(x)
        if high_res_features is None:
            raise ValueError("Sam2MaskDecoder: high_res_features (feat_s0, feat_s1) are required")
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res_features
        x = act1(ln1(dc1(x) + feat_s1))
        return act2(dc2(x) + feat_s0)

    def hypernetwork_weights(self, tokens: torch.Tensor, mask_index: list[int]) -> torch.Tensor:
        """Per-mask weights of the chosen mask tokens (0 single-mask, 1-3 multimask):
        ``tokens`` (B, Nt, C) -> (B, len(mask_index), C/8)."""
        t0 = self.first_mask_token
        return torch.stack([self.output_hypernetworks_mlps[i](tokens[:, t0 + i])
                            for i in mask_index], 1)

    def predict_mask_logits(self, tokens: torch.Tensor, image_tokens: torch.Tensor,
                            grid_hw: tuple[int, int],
                            high_res_features: tuple[torch.Tensor, torch.Tensor] | None
                            ) -> torch.Tensor:
        """Low-resolution mask logits of all four mask tokens.

        Args:
            tokens: (B, Nt, C) transformer output tokens.
            image_tokens: (B, h*w, C) transformer output image tokens.
            grid_hw: (h, w) of the image embedding.
            high_res_features: see :meth:`upscale`.

        Returns:
            (B, 4, 4h, 4w) float32 logits (256x256 for a 64x64 embedding); index 0 is the
            single-mask token, 1-3 the multimask tokens.
        """
        up = self.upscale(image_tokens, grid_hw, high_res_features)
        b, c, h, w = up.shape
        weights = self.hypernetwork_weights(tokens, list(range(self.num_mask_tokens)))
        return (weights @ up.reshape(b, c, h * w)).reshape(b, -1, h, w)

    def select_masks(self, mask_logits: torch.Tensor, iou_pred: torch.Tensor,
                     multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Official output selection: tokens 1-3 with ``multimask_output``; else token 0, or
        with ``dynamic_multimask_via_stability`` :func:`select_single_mask_by_stability`.

        ``mask_logits`` (B, 4, h, w), ``iou_pred`` (B, 4) -> (B, M, h, w), (B, M), M = 3 or 1.
        """
        if multimask_output:
            return mask_logits[:, 1:], iou_pred[:, 1:]
        if self.cfg.dynamic_multimask_via_stability:
            return select_single_mask_by_stability(
                mask_logits, iou_pred, self.cfg.dynamic_multimask_stability_delta,
                self.cfg.dynamic_multimask_stability_thresh)
        return mask_logits[:, 0:1], iou_pred[:, 0:1]

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                sparse: torch.Tensor, dense: torch.Tensor, multimask_output: bool,
                high_res_features: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks, predicted IoU and object score (reference ``MaskDecoder.forward`` in eval
        mode, without the video object-pointer tokens).

        Args:
            image_embedding: (1 or B, C, h, w) float32.
            image_pe: (1, C, h, w) float32.
            sparse: (B, Np, C) float32 prompt tokens.
            dense: (1 or B, C, h, w) float32 dense prompt embedding.
            multimask_output: three masks per prompt instead of one.
            high_res_features: see :meth:`upscale`.

        Returns:
            mask logits (B, M, 4h, 4w), predicted IoU (B, M) and object-score logits (B, 1),
            float32; M = 3 with ``multimask_output``, else 1.
        """
        tokens, image_tokens = self.run_transformer(image_embedding, image_pe, sparse, dense)
        masks = self.predict_mask_logits(tokens, image_tokens, tuple(image_embedding.shape[-2:]),
                                         high_res_features)
        masks, iou = self.select_masks(masks, self.predict_iou(tokens), multimask_output)
        return masks, iou, self.predict_object_score(tokens)
