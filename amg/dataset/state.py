"""Run state and resume: the folder ``DIR/.segment-everything`` of a dataset run.

It holds ``run.json`` (the parameters that shape the outputs, :meth:`RunOptions.fingerprint
<amg.dataset.options.RunOptions.fingerprint>`), ``done/<stem>.json`` (one marker per finished
image: source path, size and mtime, mask count, its COCO annotations and Label Studio task
when those formats are asked for) and ``lock`` (an
advisory ``flock`` held while a run writes). An image counts as finished only while its marker
exists and still matches the source file, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..io import write_atomic
from .jobs import ImageJob

__all__ = ["STATE_DIR", "RunMismatch", "RunLocked", "RunStopped", "RunState"]

STATE_DIR = ".segment-everything"


class RunMismatch(ValueError):
    """The output folder holds a run started with other parameters; the message lists them."""


class RunLocked(RuntimeError):
    """Another run is writing to the same output folder."""


class RunStopped(RuntimeError):
    """The run stopped before its end because its outputs cannot be written (disk full, quota,
    read-only file system); finished images are kept and the same command resumes the run."""


class RunState:
    """The run's state folder ``DIR/.segment-everything`` (parameters, done markers, lock).

    Args:
        root: the run's output folder ``DIR``.
    """

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / STATE_DIR
        self.done_dir = self.dir / "done"
        self._lock_file = None

    def lock(self) -> None:
        """Take the run lock (an advisory ``flock``; released when the process ends).

        Raises:
            RunLocked: another process holds it.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # not on POSIX: no locking
            return
        f = open(self.dir / "lock", "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise RunLocked(f"another segment-everything run is writing to {self.dir.parent}") from None
        self._lock_file = f

    def unlock(self) -> None:
        """Release the run lock."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def reset(self) -> None:
        """Forget the earlier run: parameters and done markers (``--overwrite``)."""
        (self.dir / "run.json").unlink(missing_ok=True)
        if self.done_dir.exists():
            shutil.rmtree(self.done_dir)

    def check_parameters(self, fingerprint: dict[str, Any]) -> None:
        """Compare the run's parameters with the stored ones, if any (nothing is written).

        Raises:
            RunMismatch: the folder holds a run with other parameters (each difference named).
        """
        path = self.dir / "run.json"
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError):
                stored = None
            if stored != _jsonable(fingerprint):
                diffs = _differences(stored or {}, _jsonable(fingerprint))
                raise RunMismatch(
                    f"{self.dir.parent} holds a run started with other parameters ({diffs}); "
                    f"run again with the same parameters to resume it, or add --overwrite to "
                    f"start over")

    def store_parameters(self, fingerprint: dict[str, Any]) -> None:
        """Store the run's parameters in ``run.json`` (once the run has really started)."""
        path = self.dir / "run.json"
        if not path.is_file():
            write_atomic(path, json.dumps(_jsonable(fingerprint), indent=1, sort_keys=True))

    def discard_unstarted(self, created: list[Path]) -> None:
        """Undo what taking the lock created when the run did not start: the lock file when
        the state folder is among ``created``, then each folder of ``created`` (deepest first)
        that is empty."""
        if self.dir in created:
            (self.dir / "lock").unlink(missing_ok=True)
        for folder in sorted(created, key=lambda f: len(f.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:
                pass

    def marker(self, stem: str) -> Path:
        """The done marker of an image."""
        return self.done_dir / f"{stem}.json"

    def finished(self, job: ImageJob) -> dict[str, Any] | None:
        """The done marker's content if the image is finished and its source is unchanged."""
        path = self.marker(job.stem)
        try:
            part = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if part.get("source") != _source_signature(job.path):
            return None
        return part

    def stored(self, job: ImageJob, key: str) -> Any:
        """A per-run output's part stored in a finished image's done marker: ``annotations``
        (its COCO annotations) or ``label_studio`` (its Label Studio task).

        Raises:
            RuntimeError: the marker vanished or lacks ``key`` (it was written by a run
                without that format, which the parameter check rules out).
        """
        part = self.finished(job)
        if part is None or key not in part:
            raise RuntimeError(f"{self.marker(job.stem)}: done marker missing or without "
                               f"{key!r}; rerun with --overwrite")
        return part[key]

    def mark_done(self, job: ImageJob, part: dict[str, Any]) -> None:
        """Write the image's done marker (atomically, after all its outputs)."""
        write_atomic(self.marker(job.stem),
                     json.dumps({"source": _source_signature(job.path), **part}, separators=(",", ":")))


def _source_signature(path: Path) -> dict[str, Any]:
    """What identifies an image file's content for the resume check: resolved path, size, mtime."""
    try:
        st = path.stat()
        return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return {"path": str(path.resolve())}


def _jsonable(data: Any) -> Any:
    """``data`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(data))


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    """Every differing key of two parameter dicts, nested keys dotted: ``k: old there, new now``."""
    parts = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            sub = _differences(a, b, prefix + k + ".")
            if sub:
                parts.append(sub)
        elif a != b:
            parts.append(f"{prefix}{k}: {a!r} there, {b!r} now")
    return "; ".join(parts)
