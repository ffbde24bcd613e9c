"""The model table: every named model of every family with its size, checkpoint file, licence,
pinned sha256 and what proves our implementation equal to the official one.

One source for ``segment-everything models`` (:mod:`amg.dataset.models_command`) and for the
README's model table (:func:`markdown_table`; a test holds the README to it). Parameter counts
are counted from the architecture itself (built on the meta device, no weights allocated), the
file, licence and sha256 come from the checkpoint records (:mod:`sam_model.checkpoints`), the
proof from :data:`PROOFS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .checkpoints import (EFFICIENT_SAM_CHECKPOINTS, KNOWN_CHECKPOINTS, CheckpointRecord,
                          cache_dir)
from .configs import EFFICIENT_SAM_CONFIGS, MODEL_CONFIGS, SAM_HQ_CONFIGS
from .efficient_sam import EfficientSam
from .sam import Sam
from .sam2 import Sam2
from .sam2_configs import SAM2_CONFIGS
from .sam_hq import SamHQ

_SAM = "random-weight parity with `segment-anything==1.0`"
_HQ = "random-weight parity with `segment-anything-hq==0.3`"
_SAM2 = "random-weight parity with `sam2==1.1.0`"
_ESAM = "random-weight parity with the official EfficientSAM code"

# What the tests compare, per model, in table order: real weights on real photos, or the
# official code with the same seeded random weights (float32, within 1e-4 relative).
PROOFS: dict[str, str] = {
    "mobile_sam": "real weights: parity with `mobilesam-lite` (encoder, decoder, generator)",
    "vit_b": f"{_SAM} (encoder, decoder)",
    "vit_l": "state-dict layout and blocks vs `segment-anything==1.0` (random weights)",
    "vit_h": "state-dict layout and blocks vs `segment-anything==1.0` (random weights)",
    "sam_hq_vit_b": f"{_HQ} (encoder, decoder, generator)",
    "sam_hq_vit_l": f"{_HQ} (encoder, decoder)",
    "sam_hq_vit_h": f"{_HQ} (encoder, decoder)",
    "sam_hq_vit_tiny": f"{_HQ} (encoder, decoder, generator)",
    "sam2.1_hiera_tiny": f"{_SAM2} (encoder, decoder, generator batches)",
    "sam2.1_hiera_small": f"{_SAM2} (encoder, decoder)",
    "sam2.1_hiera_base_plus": f"{_SAM2} (encoder, decoder)",
    "sam2.1_hiera_large": f"{_SAM2} (encoder, decoder)",
    "efficient_sam_vitt": f"{_ESAM} (encoder, decoder, generator)",
    "efficient_sam_vits": f"{_ESAM} (encoder, decoder, generator)",
}


@dataclass(frozen=True)
class ModelEntry:
    """One row of the model table.

    Attributes:
        family: ``MobileSAM``, ``SAM``, ``SAM-HQ``, ``SAM 2.1`` or ``EfficientSAM``.
        name: the name :func:`sam_model.load_model` and ``--model`` take.
        parameters: parameter count of the model built here (SAM 2.1: the image model only).
        checkpoint: the official file's record (file name, sha256 or None, licence, sources).
        proof: what the parity tests compare (see :data:`PROOFS`).
    """

    family: str
    name: str
    parameters: int
    checkpoint: CheckpointRecord
    proof: str

    @property
    def cached(self) -> bool:
        """Whether the checkpoint file is in the cache directory (its sha256, where pinned, is
        checked when it is loaded)."""
        return (cache_dir() / self.checkpoint.filename).is_file()


def _family(name: str) -> tuple[str, type[nn.Module], object]:
    """(family label, model class, config) of a model name."""
    if name == "mobile_sam":
        return "MobileSAM", Sam, MODEL_CONFIGS[name]
    if name in MODEL_CONFIGS:
        return "SAM", Sam, MODEL_CONFIGS[name]
    if name in SAM_HQ_CONFIGS:
        return "SAM-HQ", SamHQ, SAM_HQ_CONFIGS[name]
    if name in SAM2_CONFIGS:
        return "SAM 2.1", Sam2, SAM2_CONFIGS[name]
    return "EfficientSAM", EfficientSam, EFFICIENT_SAM_CONFIGS[name]


def model_table() -> list[ModelEntry]:
    """Every named model, family by family (MobileSAM, SAM, SAM-HQ, SAM 2.1, EfficientSAM).

    Parameter counts come from building each architecture on the meta device (no memory, no
    weights; about a second in all)."""
    rows = []
    for name, proof in PROOFS.items():
        family, cls, cfg = _family(name)
        with torch.device("meta"):
            n_params = sum(p.numel() for p in cls(cfg).parameters())
        record = EFFICIENT_SAM_CHECKPOINTS.get(name) or KNOWN_CHECKPOINTS[name]
        rows.append(ModelEntry(family, name, n_params, record, proof))
    return rows


def markdown_table(rows: list[ModelEntry]) -> str:
    """The README's model table (GitHub markdown, one line per model, ending in a newline):
    family, name, parameters in millions (two decimals), checkpoint file, licence, sha256
    (``not published`` where none is) and proof."""
    lines = ["| family | name | parameters (M) | checkpoint file | licence | sha256 | proven by |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        sha = f"`{r.checkpoint.sha256}`" if r.checkpoint.sha256 else "not published"
        lines.append(f"| {r.family} | `{r.name}` | {r.parameters / 1e6:.2f} | "
                     f"`{r.checkpoint.filename}` | {r.checkpoint.license} | {sha} | {r.proof} |")
    return "\n".join(lines) + "\n"


__all__ = ["ModelEntry", "PROOFS", "markdown_table", "model_table"]
