"""torch's intra-op thread count for a block of work (the model's threads in a run)."""

from __future__ import annotations

from typing import Any

__all__ = ["TorchThreads"]


class TorchThreads:
    """Set torch's intra-op thread count for a block, then restore it; ``None`` changes nothing.

    Use as a context manager (``with TorchThreads(2): ...``), or call :meth:`__enter__` once
    for the life of a worker (the Ray engine's actors). torch is imported only when a count
    is given.

    Args:
        threads: intra-op threads (``torch.set_num_threads``), or ``None`` for torch's own.
    """

    def __init__(self, threads: int | None) -> None:
        self.threads = threads
        self.before: int | None = None

    def __enter__(self) -> None:
        if self.threads is not None:
            import torch
            self.before = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc: Any) -> None:
        if self.before is not None:
            import torch
            torch.set_num_threads(self.before)
