"""What every model family's top-level module shares (SAM, SAM-HQ, SAM 2.1, EfficientSAM)."""

from __future__ import annotations

import torch
from torch import nn


class FamilyModel(nn.Module):
    """Base of the families' models: the device, the mask threshold of their config, and the
    switch between fused and written-out attention. Subclasses set ``self.cfg`` (with a
    ``mask_threshold`` attribute) and hold at least one parameter."""

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.parameters()).device

    @property
    def mask_threshold(self) -> float:
        """Logit threshold of the mask (0.0)."""
        return self.cfg.mask_threshold

    def set_fused_attention(self, fused: bool) -> None:
        """Use fused SDPA attention (default) or the written-out softmax(QK^T)V everywhere."""
        for m in self.modules():
            if hasattr(m, "fused"):
                m.fused = fused
