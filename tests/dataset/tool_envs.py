"""The annotation tools' own virtual environments (made by .ci/tool-venvs) and running a
script in one of them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("SEGMENT_EVERYTHING_TOOLS_CACHE",
                            Path.home() / ".cache" / "segment-everything-ci"))
SCRIPTS = Path(__file__).resolve().parent / "tool_scripts"


def tool_python(name: str) -> Path:
    """The python of the venv of tool ``name`` (``label-studio``, ``datumaro``):
    ``$SEGMENT_EVERYTHING_<NAME>_PYTHON``, else ``<cache>/<name>-venv/bin/python``.

    Fails the test (does not skip) when it is missing."""
    var = "SEGMENT_EVERYTHING_" + name.upper().replace("-", "_") + "_PYTHON"
    python = Path(os.environ.get(var) or CACHE / f"{name}-venv" / "bin" / "python")
    if not python.is_file():
        pytest.fail(f"{name} venv missing: {python} (make it with `source .ci/tool-venvs`, or set {var})")
    return python


def run_tool_script(name: str, script: str, *args: str, timeout: float = 600) -> str:
    """Run ``tool_scripts/<script>`` with tool ``name``'s python; returns its stdout.

    Fails the test with the script's stderr when it exits non-zero."""
    proc = subprocess.run([str(tool_python(name)), str(SCRIPTS / script), *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        pytest.fail(f"{script} in the {name} venv failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout
