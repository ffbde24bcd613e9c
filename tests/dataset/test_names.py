"""Output names of a run's images (:func:`amg.dataset.names.output_stems`): distinct, stable,
collisions told apart by the shortest distinguishing path tail."""

from __future__ import annotations

from pathlib import Path

from amg.dataset.names import output_stems


def test_output_stems_unique_stems_kept():
    paths = [Path("a/dog.jpg"), Path("b/cat.png"), Path("truck.jpeg")]
    assert output_stems(paths) == ["dog", "cat", "truck"]


def test_output_stems_collisions_use_path():
    paths = [Path("a/dog.jpg"), Path("b/dog.jpg"), Path("cat.png"), Path("c/d/dog.png")]
    stems = output_stems(paths)
    assert stems == ["a__dog", "b__dog", "cat", "d__dog"]
    assert output_stems(paths) == stems  # stable


def test_output_stems_absolute_paths(tmp_path):
    paths = [tmp_path / "x" / "dog.jpg", tmp_path / "y" / "dog.jpg"]
    stems = output_stems(paths)
    assert len(set(stems)) == 2
    for s in stems:
        assert "/" not in s and not s.startswith("_")
    assert stems == ["x__dog", "y__dog"]


def test_output_stems_empty():
    assert output_stems([]) == []



def test_output_stems_same_stem_different_extension():
    stems = output_stems([Path("a/dog.jpg"), Path("a/dog.png")])
    assert stems == ["dog.jpg", "dog.png"]
    # A generated name that equals another file's own stem is numbered, not overwritten.
    assert output_stems([Path("a/dog.jpg"), Path("b/dog.jpg"), Path("a__dog.jpg")]) == \
        ["a__dog", "b__dog", "a__dog-2"]


def test_output_stems_leading_dots_stay_inside_the_output_folder():
    """``..jpg`` (stem ``.``) and ``...jpg`` (stem ``..``) must not name the folder itself or its
    parent (``masks/..``), nor any name a hidden file."""
    paths = [Path("a/..jpg"), Path("a/...jpg"), Path("a/.hidden.png"), Path("a/_.jpg")]
    assert output_stems(paths) == ["_", "__", "_hidden", "_-2"]
    assert output_stems([Path("x/..jpg"), Path("y/..jpg")]) == ["x__.", "y__."]


def test_leading_dot_names_write_into_their_own_folders(tmp_path):
    from amg.dataset.outputs import OutputPaths
    paths = OutputPaths(tmp_path / "out")
    for stem in output_stems([Path("..jpg"), Path("...jpg")]):
        for f in (paths.json(stem), paths.png_dir(stem), paths.labelmap(stem), paths.overlay(stem)):
            rel = f.resolve().relative_to((tmp_path / "out").resolve())
            assert len(rel.parts) == (1 if f == paths.json(stem) else 2), f
            assert not any(part.startswith(".") for part in rel.parts), f

