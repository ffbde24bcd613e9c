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
