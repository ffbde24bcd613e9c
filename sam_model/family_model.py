"""What every model family's top-level module shares (SAM, SAM-HQ, SAM 2.1, EfficientSAM)."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping, TypeVar

import torch
from torch import nn

Fn = TypeVar("Fn", bound=Callable[..., Any])


class DecoderOptionError(ValueError):
    """A family option given to a point decoder whose family does not have it; the message
    names the option and the model."""


def checks_decoder_options(point_decoder: Fn) -> Fn:
    """Decorator of a family's ``point_decoder``: a keyword option its signature does not
    take raises :class:`DecoderOptionError` (``hq_token_only is not an option of mobile_sam's
    point decoder (its options: chunk_size)``) instead of Python's ``TypeError``."""
    @functools.wraps(point_decoder)
    def wrapper(self: "FamilyModel", *args: Any, **options: Any) -> Any:
        self.check_decoder_options(options)
        return point_decoder(self, *args, **options)
    return wrapper  # type: ignore[return-value]


class FamilyModel(nn.Module):
    """Base of the families' models: the device, the name and mask threshold of their config,
    the switch between fused and written-out attention, and the check of point-decoder
    options. Subclasses set the class attribute
    ``family`` (``"sam"``, ``"sam_hq"``, ``"sam2"``, ``"efficient_sam"``: the key of the
    family's generator defaults, ``amg.config.FAMILY_DEFAULTS``) and ``self.cfg`` (with
    ``name`` and ``mask_threshold`` attributes), and hold at least one parameter."""

    family: str

    @property
    def name(self) -> str:
        """The architecture's registry name (``vit_b``, ``sam2.1_hiera_tiny``, ...)."""
        return self.cfg.name

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

    def decoder_options(self) -> tuple[str, ...]:
        """The family options of :meth:`point_decoder`: its keyword-only parameters other than
        ``plain`` (SAM: ``chunk_size``; SAM-HQ: ``hq_token_only``, ...)."""
        params = inspect.signature(type(self).point_decoder).parameters.values()
        return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "plain")

    def check_decoder_options(self, options: Mapping[str, Any]) -> None:
        """Raise :class:`DecoderOptionError` for the first name in ``options`` that is not a
        parameter of :meth:`point_decoder` (the message lists :meth:`decoder_options`)."""
        params = inspect.signature(type(self).point_decoder).parameters
        for name in options:
            if name not in params or name == "self":
                raise DecoderOptionError(
                    f"{name} is not an option of {self.cfg.name}'s point decoder "
                    f"(its options: {', '.join(self.decoder_options()) or 'none'})")
