"""Packaging: runtime dependencies are ranges, CI installs the exact versions of
``.ci/constraints.txt`` (every dependency pinned there), and the README's install commands match."""

from __future__ import annotations

import re
import tomllib

from .conftest import REPO


def requirement_name(req: str) -> str:
    return re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_dependencies_are_ranges_pinned_exactly_for_ci():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = project["dependencies"]
    assert runtime and all("==" not in r and ">=" in r for r in runtime), runtime
    names = {requirement_name(r) for r in runtime}
    assert {"torch", "torchvision", "pooch"} <= names
    pins = {}
    for line in (REPO / ".ci" / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraint {line!r} is not an exact version"
            pins[requirement_name(name)] = version
    extras = {requirement_name(r) for r in project["optional-dependencies"]["test"]}
    assert names | extras <= set(pins), (names | extras) - set(pins)
    assert '-c .ci/constraints.txt -e ".[test]"' in (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert 'python3 -m pip install -c .ci/constraints.txt -e ".[test]"' in readme
    assert "segment-everything examples/dog.jpg --output out" in readme


def test_readme_python_snippet_runs_from_any_directory(tmp_path, monkeypatch, capsys):
    """The README's Python snippet (Quick start), as written, run from an unrelated directory (a
    4 x 4 grid instead of the default 32 x 32 keeps it to seconds; paths and calls are the
    snippet's)."""
    import amg.generator
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Quick start"):]
    start = section.index("```python\n") + len("```python\n")
    snippet = section[start:section.index("```", start)]
    assert "example_image()" in snippet

    class SmallGrid(amg.generator.MaskGenerator):
        def __init__(self, model, config=None, **params):
            super().__init__(model, config, **{**params, "points_per_side": 4})

    monkeypatch.setattr(amg.generator, "MaskGenerator", SmallGrid)
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    n, keys = capsys.readouterr().out.split(" ", 1)
    assert int(n) >= 1 and "'segmentation'" in keys and "'predicted_iou'" in keys
