"""A run's results as they come: the progress bar, the error list (``DIR/errors.csv``, kept up
to date after every failure) and the counts."""

from __future__ import annotations

import csv
import io
import sys

from tqdm import tqdm

from ..io import write_atomic
from .jobs import ImageJob
from .options import RunOptions
from .outputs import OutputPaths
from .state import RunStopped

__all__ = ["Progress"]


class Progress:
    """Results as they come: progress bar, error list (kept in ``DIR/errors.csv``), counts.

    Args:
        todo: images this run processes (the bar's total).
        options: the run's :class:`~amg.dataset.options.RunOptions`.
        resumed_masks: masks of the images an earlier run finished.
    """

    def __init__(self, todo: int, options: RunOptions, resumed_masks: int) -> None:
        self.options = options
        self.paths = OutputPaths(options.output)
        self.masks = resumed_masks
        self.done_now = 0
        self.failed: dict[int, tuple[str, str]] = {}
        self.bar = tqdm(total=todo, unit="img", desc="segmenting", disable=not options.progress,
                        dynamic_ncols=True, file=sys.stderr)
        self.bar.set_postfix(masks=self.masks)

    def note(self, job: ImageJob, note: str) -> None:
        """A conversion note from decoding (e.g. ``converted from I;16``)."""
        tqdm.write(f"{job.path}: {note}")

    def ok(self, job: ImageJob, n_masks: int) -> None:
        """An image finished with ``n_masks`` masks."""
        self.done_now += 1
        self.masks += n_masks
        self.bar.update(1)
        self.bar.set_postfix(masks=self.masks)

    def fail(self, job: ImageJob, reason: str) -> None:
        """An image failed: report it and record it in ``DIR/errors.csv`` at once."""
        self.failed[job.index] = (str(job.path), reason)
        tqdm.write(f"error: {job.path}: {reason}", file=sys.stderr)
        self.bar.update(1)
        self.write_errors()

    def write_errors(self) -> None:
        """``DIR/errors.csv`` (``path,reason``, input order), or no such file when none failed.

        Raises:
            RunStopped: the file cannot be written (disk full, or any other ``OSError``: the
                earlier ``errors.csv`` is left as it was).
        """
        try:
            if not self.failed:
                self.paths.errors.unlink(missing_ok=True)
                return
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["path", "reason"])
            w.writerows(self.failed[i] for i in sorted(self.failed))
            write_atomic(self.paths.errors, buf.getvalue())
        except OSError as exc:
            raise RunStopped(f"cannot write {self.paths.errors}: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Close the progress bar."""
        self.bar.close()
