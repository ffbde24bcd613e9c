"""The local engine: a dataset run in this process.

Images are decoded ahead on ``options.workers`` threads (bounded, in order), the model runs on
the calling thread, and each image's outputs are written behind on the same threads (bounded),
so decoding, the model and the writers overlap.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

from ..io import load_image
from .jobs import ImageJob
from .options import RunOptions
from .processing import ImageProcessor, failure_reason, load_generator
from .progress import Progress
from .threads import TorchThreads

__all__ = ["run_local_jobs"]


def _prefetch(jobs: list[ImageJob], pool: ThreadPoolExecutor, ahead: int
              ) -> Iterator[tuple[ImageJob, Future]]:
    """``(job, future of load_image(job.path))`` in job order, at most ``ahead`` decoding."""
    queue: deque[tuple[ImageJob, Future]] = deque()
    it = iter(jobs)
    for job in it:
        queue.append((job, pool.submit(load_image, job.path)))
        if len(queue) >= ahead:
            break
    while queue:
        yield queue.popleft()
        nxt = next(it, None)
        if nxt is not None:
            queue.append((nxt, pool.submit(load_image, nxt.path)))


def run_local_jobs(jobs: list[ImageJob], options: RunOptions, progress: Progress) -> None:
    """The local engine: decode ahead on ``options.workers`` threads (bounded, in order), run
    the model on this thread, write outputs behind on the same threads (bounded).

    The model is loaded when the first image decodes, so a resume whose remaining images are
    all unreadable does not load it.

    Raises:
        sam_model.CheckpointError: the model cannot be loaded.
    """
    device = options.device or "cpu"
    with TorchThreads(options.threads):
        processor: ImageProcessor | None = None  # the model loads with the first good image
        writes: deque[tuple[ImageJob, Future]] = deque()

        def collect(job: ImageJob, fut: Future) -> None:
            try:
                progress.ok(job, fut.result())
            except Exception as exc:  # one image's failure never stops the run
                progress.fail(job, failure_reason(job.path, exc))

        with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="amg-io") as pool:
            for job, decoded in _prefetch(jobs, pool, ahead=2 * options.workers):
                try:
                    image, note = decoded.result()
                except Exception as exc:  # noqa: BLE001 - recorded, and the run goes on
                    progress.fail(job, failure_reason(job.path, exc))
                    continue
                if note:
                    progress.note(job, note)
                if processor is None:
                    processor = ImageProcessor(load_generator(options, device), options)
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
