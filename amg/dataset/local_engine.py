"""The local engine: a dataset run in this process.

Images are decoded ahead on ``options.workers`` threads (bounded, in order), the model runs on
the calling thread, and each image's outputs are written behind on the same threads (bounded),
so decoding, the model and the writers overlap.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

from .jobs import ImageJob
from .options import RunOptions
from .processing import ImageProcessor, decode_image, failure_reason
from .progress import Progress
from .state import RunStopped
from .threads import TorchThreads

__all__ = ["run_local_jobs"]


def _prefetch(jobs: list[ImageJob], pool: ThreadPoolExecutor, ahead: int,
              max_pixels: int | None) -> Iterator[tuple[ImageJob, Future]]:
    """``(job, future of decode_image(job.path))`` in job order, at most ``ahead`` decoding."""
    queue: deque[tuple[ImageJob, Future]] = deque()
    it = iter(jobs)
    for job in it:
        queue.append((job, pool.submit(decode_image, job.path, max_pixels)))
        if len(queue) >= ahead:
            break
    while queue:
        yield queue.popleft()
        nxt = next(it, None)
        if nxt is not None:
            queue.append((nxt, pool.submit(decode_image, nxt.path, max_pixels)))


def run_local_jobs(jobs: list[ImageJob], options: RunOptions, progress: Progress,
                   processor: ImageProcessor) -> None:
    """The local engine: decode ahead on ``options.workers`` threads (bounded, in order), run
    the model of ``processor`` (loaded by the caller, before the run starts) on this thread,
    write outputs behind on the same threads (bounded).

    Raises:
        RunStopped: the outputs cannot be written (disk full...); the writes already submitted
            are finished or abandoned first, and every finished image keeps its done marker.
    """
    with TorchThreads(options.threads):
        writes: deque[tuple[ImageJob, Future]] = deque()

        def collect(job: ImageJob, fut: Future) -> None:
            try:
                n_masks = fut.result()
            except RunStopped:
                raise
            except Exception as exc:  # one image's failure never stops the run
                progress.fail(job, failure_reason(job.path, exc))
            else:
                progress.ok(job, n_masks)

        with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="amg-io") as pool:
            for job, decoded in _prefetch(jobs, pool, 2 * options.workers, options.max_pixels):
                try:
                    image, note = decoded.result()
                except Exception as exc:  # noqa: BLE001 - recorded, and the run goes on
                    progress.fail(job, failure_reason(job.path, exc))
                    continue
                if note:
                    progress.note(job, note)
                try:
                    records = processor.generate(image)
                except Exception as exc:  # noqa: BLE001 - recorded, and the run goes on
                    progress.fail(job, failure_reason(job.path, exc))
                    continue
                writes.append((job, pool.submit(processor.finish, job, image, records)))
                while len(writes) > options.workers:
                    collect(*writes.popleft())
            while writes:
                collect(*writes.popleft())
