"""Proposal sources: a named mask generator with a stable identity, so that its proposals can
be cached per image and reused until anything that changes the masks changes.

:func:`our_source` builds one for our :class:`amg.MaskGenerator` (identity: preset parameters,
a fingerprint of the generation code, the weights, the device); ``tools/evaluate.py`` builds one
for the reference generator.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["ProposalSource", "json_default", "code_fingerprint", "our_source"]

REPO_ROOT = Path(__file__).resolve().parents[2]
# Folders of the product that do not influence the masks (left out of the code fingerprint).
_NON_GENERATION_DIRS = ("amg/dataset/", "amg/evaluation/")


@dataclass
class ProposalSource:
    """A named mask generator with a stable identity for caching.

    Attributes:
        name: row label in the report (e.g. ``default``, ``reference:default``).
        key: JSON-able identity of everything that changes the masks (kind, parameters, code
            fingerprint or package version, weights); its hash names the cache folder.
        make_generator: builds the generator (an object with ``generate(image) -> records``,
            image (H, W, 3) uint8 RGB); called only when some image is not cached.
    """

    name: str
    key: dict[str, Any]
    make_generator: Callable[[], Any]
    _generator: Any = field(default=None, repr=False)

    @property
    def key_hash(self) -> str:
        """First 16 hex digits of the sha256 of the canonical JSON of ``key``."""
        blob = json.dumps(self.key, sort_keys=True, default=json_default).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def cache_dir(self, root: str | Path) -> Path:
        """This source's cache folder under ``root``: ``<slug of name>-<key_hash>``."""
        slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", self.name).strip("_")[:80] or "row"
        return Path(root) / f"{slug}-{self.key_hash}"

    def generator(self) -> Any:
        """The generator, built on first use."""
        if self._generator is None:
            self._generator = self.make_generator()
        return self._generator


def json_default(o: Any) -> Any:
    """``json.dumps`` ``default=`` for numpy arrays and scalars and paths.

    Raises:
        TypeError: any other type.
    """
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-able: {type(o).__name__}")


def code_fingerprint() -> dict[str, Any]:
    """Identity of the mask-generation code: sha256 over ``sam_model/**/*.py`` and
    ``amg/**/*.py`` (paths and contents; ``amg/dataset/`` and ``amg/evaluation/`` left out), with
    the torch and numpy versions. Any edit of the generation code changes it (cache miss)."""
    import torch
    h = hashlib.sha256()
    for pkg in ("sam_model", "amg"):
        for f in sorted((REPO_ROOT / pkg).rglob("*.py")):
            rel = f.relative_to(REPO_ROOT).as_posix()
            if rel.startswith(_NON_GENERATION_DIRS):
                continue
            h.update(rel.encode() + b"\0" + f.read_bytes() + b"\0")
    return {"sources_sha256": h.hexdigest()[:16], "torch": torch.__version__, "numpy": np.__version__}


def our_source(preset: str = "default", overrides: dict[str, Any] | None = None,
               model: Any = "mobile_sam", device: str = "cpu", name: str | None = None) -> ProposalSource:
    """Our :class:`MaskGenerator` with a preset (+ overrides) as a :class:`ProposalSource`.

    Args:
        preset: preset name (``default``, ``crops``, ...) or YAML path.
        overrides: :class:`AMGConfig` fields to change (``output_mode`` is forced to
            ``coco_rle``).
        model: :func:`sam_model.load_model` name or checkpoint path (loaded on first use), or
            a loaded :class:`sam_model.Sam` (used as is; identified by a hash of its weights,
            and ``device`` is then taken from it).
        device: torch device string for a model given by name or path.
        name: row label; default ``preset`` plus ``[k=v,...]`` for the overrides.

    Raises:
        ConfigError: unknown preset, parameter or value (raised here, before any work).
    """
    from sam_model import load_model

    from ..config import AMGConfig
    from ..generator import MaskGenerator  # imported before the code is fingerprinted
    overrides = dict(overrides or {})
    cfg = AMGConfig.from_preset(preset, **overrides).replace(output_mode="coco_rle")
    params = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "output_mode"}
    loaded = not isinstance(model, (str, Path))
    if loaded:
        device = str(next(model.parameters()).device)
    key = {"kind": "ours", "model": _loaded_model_identity(model) if loaded else _model_identity(str(model)),
           "device": device, "params": params, "code": code_fingerprint()}

    def make() -> Any:
        return MaskGenerator(model if loaded else load_model(model, device=device), cfg)

    label = name or (preset + (f"[{','.join(f'{k}={v}' for k, v in overrides.items())}]" if overrides else ""))
    return ProposalSource(name=label, key=key, make_generator=make)


def _model_identity(model: str) -> dict[str, Any]:
    """A model name with its registered checkpoint sha256, or a file path with its size."""
    from sam_model import checkpoints
    if model in checkpoints.KNOWN_CHECKPOINTS:
        return {"name": model, "sha256": checkpoints.KNOWN_CHECKPOINTS[model].sha256}
    p = Path(model)
    if p.is_file():
        st = p.stat()
        return {"path": str(p.resolve()), "bytes": st.st_size, "mtime": int(st.st_mtime)}
    return {"name": model}


def _loaded_model_identity(model: Any) -> dict[str, Any]:
    """A loaded model's class and the sha256 (16 hex digits) of its state dict (names, dtypes,
    shapes, bytes)."""
    import torch
    h = hashlib.sha256()
    for k, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return {"class": type(model).__name__, "state_dict_sha256": h.hexdigest()[:16]}
