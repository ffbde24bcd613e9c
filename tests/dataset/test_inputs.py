"""Finding a run's images (:mod:`amg.dataset.inputs`): folders searched recursively or not,
image extensions only, sorted, files taken as given, de-duplicated, missing inputs named."""

from __future__ import annotations

from pathlib import Path

import pytest

from amg.dataset.inputs import find_images


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "photos"
    files = ["b.jpg", "a.PNG", "c.jpeg", "notes.txt", "sub/d.tif", "sub/e.webp", "sub/x.json",
             "sub/deeper/f.bmp", "sub/deeper/g.JPG", "z_dir/h.png"]
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(b"x")
    return root


def test_find_images_recursive_filtered_sorted(tree):
    found = find_images([tree])
    rel = [p.relative_to(tree).as_posix() for p in found]
    assert rel == ["a.PNG", "b.jpg", "c.jpeg", "sub/d.tif", "sub/deeper/f.bmp",
                   "sub/deeper/g.JPG", "sub/e.webp", "z_dir/h.png"]
    assert all(isinstance(p, Path) for p in found)


def test_find_images_not_recursive(tree):
    rel = [p.relative_to(tree).as_posix() for p in find_images([tree], recursive=False)]
    assert rel == ["a.PNG", "b.jpg", "c.jpeg"]


def test_find_images_files_taken_as_given(tree):
    # A file named explicitly is kept whatever its extension (reported later, not skipped).
    found = find_images([tree / "notes.txt", str(tree / "b.jpg")])
    assert found == [tree / "notes.txt", tree / "b.jpg"]


def test_find_images_deduplicates(tree):
    found = find_images([tree / "b.jpg", tree, tree / "sub", tree / "sub" / ".." / "c.jpeg"])
    assert len(found) == len(set(p.resolve() for p in found)) == 8
    assert found[0] == tree / "b.jpg"  # first mention wins
    assert sorted(p.name for p in found) == ["a.PNG", "b.jpg", "c.jpeg", "d.tif", "e.webp",
                                             "f.bmp", "g.JPG", "h.png"]


def test_find_images_empty_folder(tmp_path):
    assert find_images([tmp_path]) == []


def test_find_images_missing_input(tree):
    missing = tree / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        find_images([tree, missing])
