"""The report's plots: recall against proposals per image, and recall by object size (PNG,
matplotlib's Agg canvas, no pyplot state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import EvaluationError
from .recall import AREA_LABELS
from .report import format_value

__all__ = ["write_plots"]


def write_plots(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Two PNG plots of a report, one line (or bar group) per row, matplotlib Agg, no pyplot.

    - ``recall_vs_proposals.png``: AR (IoU 0.50:0.95) against proposals per image, log x axis;
    - ``recall_by_size.png``: AR@1000 for small/medium/large objects, grouped bars.

    Returns:
        the written paths.

    Raises:
        EvaluationError: matplotlib is not installed (``pip install -e .[eval]``).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise EvaluationError("--plots needs matplotlib: pip install -e '.[eval]'") from exc
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = report["rows"]
    n_img = report["dataset"]["images"]

    fig, ax = _figure(Figure, FigureCanvasAgg)
    for i, r in enumerate(rows):
        curve = r["recall_curve"]  # line styles differ so that identical rows stay visible
        ax.plot(curve["max_dets"], curve["AR"], marker="o", markersize=3, label=r["name"],
                linestyle=("-", "--", ":", "-.")[i % 4])
    ax.set_xscale("log")
    ax.set_xlabel("proposals per image")
    p1 = _finish(fig, ax, "AR (mask IoU 0.50:0.95)", f"Class-agnostic mask recall, {n_img} images",
                 out_dir / "recall_vs_proposals.png", which="both")

    fig, ax = _figure(Figure, FigureCanvasAgg)
    sizes = AREA_LABELS[1:]
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        key = f"{r['recall_curve']['max_dets'][-1]}"
        vals = [r.get(f"AR_{s}@{key}", float("nan")) for s in sizes]
        xs = np.arange(len(sizes)) + (i - (len(rows) - 1) / 2) * width
        bars = ax.bar(xs, np.nan_to_num(vals), width=width, label=r["name"])
        ax.bar_label(bars, labels=[format_value(v, 2) for v in vals], fontsize=7, padding=1)
    ax.set_xticks(np.arange(len(sizes)), [f"{s}\n({report['dataset']['instances_by_size'][s]} objects)"
                                           for s in sizes])
    p2 = _finish(fig, ax, "AR@1000 (mask IoU 0.50:0.95)", f"Recall by object size, {n_img} images",
                 out_dir / "recall_by_size.png", axis="y")
    return [p1, p2]


def _figure(figure: Any, canvas: Any) -> tuple[Any, Any]:
    """A 6.4 x 4.4 in, 120 dpi figure on an Agg canvas, and its one axes."""
    fig = figure(figsize=(6.4, 4.4), dpi=120)
    canvas(fig)
    return fig, fig.add_subplot()


def _finish(fig: Any, ax: Any, ylabel: str, title: str, path: Path, **grid: Any) -> Path:
    """Recall axis (0 to 1), grid (``grid``: matplotlib's ``which``/``axis``), title, legend;
    saved to ``path``, which is returned."""
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3, **grid)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path
