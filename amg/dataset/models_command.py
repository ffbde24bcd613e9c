"""``segment-everything models``: the model table (:func:`sam_model.model_table.model_table`)
as plain text, with whether each checkpoint file is already in the cache.

    segment-everything models
"""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    """The subcommand's parser (no options besides ``--help``)."""
    return argparse.ArgumentParser(
        prog="segment-everything models",
        description="List every model name --model takes: family, parameters, checkpoint file, "
                    "licence, pinned sha256 (first 12 hex digits), whether the file is in the "
                    "cache, and what proves it equal to the official implementation.")


def format_table(rows: list[list[str]]) -> str:
    """Left-aligned columns (numbers right-aligned: cells that parse as floats), two spaces
    apart, one line per row, ending in a newline."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def is_number(text: str) -> bool:
        try:
            float(text)
            return True
        except ValueError:
            return False
    lines = ["  ".join(c.rjust(w) if is_number(c) else c.ljust(w)
                       for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Print the model table; returns 0 (argparse exits 2 on unknown arguments)."""
    build_parser().parse_args(argv)
    from sam_model.checkpoints import cache_dir  # heavy imports after argument checks
    from sam_model.model_table import model_table

    rows = [["family", "name", "params (M)", "checkpoint file", "licence", "sha256", "cached",
             "proven by"]]
    for m in model_table():
        sha = m.checkpoint.sha256[:12] if m.checkpoint.sha256 else "not published"
        rows.append([m.family, m.name, f"{m.parameters / 1e6:.2f}", m.checkpoint.filename,
                     m.checkpoint.license, sha, "yes" if m.cached else "no",
                     m.proof.replace("`", "")])
    print(format_table(rows), end="")
    print(f"\ncache: {cache_dir()} (set SEGMENT_EVERYTHING_CACHE to move it). Files with a "
          "pinned sha256 are downloaded on first use and verified; the others are never "
          "downloaded: put the file in the cache or pass its path to --model.")
    return 0
