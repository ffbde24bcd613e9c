"""The checks a dataset run makes before it writes anything: the output folder can be written,
the device exists here, and the model's weights are at hand (:func:`amg.dataset.run.run_dataset`
runs them, then takes the lock and only then stores ``run.json``).

Each failure is a :class:`StartError` whose message is one line naming the flag and the value,
so that a corrected command starts cleanly (no ``run.json`` left behind to refuse it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["StartError", "check_output_folder", "check_device", "check_model"]


class StartError(ValueError):
    """A run cannot start: its output folder, device or model is unusable; nothing was written."""


def check_output_folder(path: str | Path) -> None:
    """Check that ``path`` is, or can be created as, a folder this process can write in.

    Nothing is left behind: the check creates and removes a hidden probe file in ``path``, or
    in its nearest existing parent when ``path`` does not exist yet.

    Raises:
        StartError: ``path`` (or a parent) exists and is not a folder, is a broken link, or
            files cannot be created there (permission, read-only file system...).
    """
    path = Path(path)
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            raise StartError(f"--output {path}: {existing} is a broken symbolic link")
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        where = "exists and is not a folder" if existing == path else f"{existing} is not a folder"
        raise StartError(f"--output {path}: {where}")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".segment-everything-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StartError(f"--output {path}: cannot create files in {existing} "
                         f"({exc.strerror or exc})") from None


def check_device(device: str | None, engine: str = "local") -> None:
    """Check a ``--device`` value: a torch device name, present on this machine.

    With ``engine="ray"`` only the name is checked (the devices are the cluster's; the Ray
    engine checks that the cluster has GPUs).

    Raises:
        StartError: not a torch device name, or no such device here (no CUDA GPU, a GPU index
            beyond the ones present, no MPS...).
    """
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise StartError(f"--device {device}: not a torch device (e.g. cpu, cuda, cuda:1, mps)"
                         ) from None
    if engine == "ray" or dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else \
                "torch.cuda.is_available() is False"
            raise StartError(f"--device {device}: no CUDA GPU is available here ({why}); use "
                             f"--device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise StartError(f"--device {device}: this machine has {n} CUDA GPU(s), "
                             f"cuda:0 to cuda:{n - 1}")
        return
    if dev.type == "mps":
        available = torch.backends.mps.is_available()
    else:
        backend = getattr(torch, dev.type, None)
        available = bool(backend is not None and getattr(backend, "is_available", lambda: False)())
    if not available:
        raise StartError(f"--device {device}: no {dev.type} device is available here; use "
                         f"--device cpu")


def check_model(model: str) -> None:
    """Check that ``--model`` names a known checkpoint whose weights can be had (fetched into
    the cache and verified now, downloading on first use), or an existing file.

    Raises:
        StartError: neither a known name nor a file.
        sam_model.CheckpointError: the weights cannot be fetched or verified (a cache entry
            that is a folder or truncated, offline without a cached file...).
    """
    from sam_model import KNOWN_CHECKPOINTS, fetch_checkpoint

    if Path(model).is_file():
        return
    if model not in KNOWN_CHECKPOINTS:
        what = "is a folder, not a checkpoint file" if Path(model).is_dir() else \
            f"neither a known model ({', '.join(KNOWN_CHECKPOINTS)}) nor a checkpoint file"
        raise StartError(f"--model {model}: {what}")
    fetch_checkpoint(model)
