"""The one error of the evaluation package."""

from __future__ import annotations

__all__ = ["EvaluationError"]


class EvaluationError(ValueError):
    """Bad evaluation input (dataset file, image ids, records, cache); the message names it."""
