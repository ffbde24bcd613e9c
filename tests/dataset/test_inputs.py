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


def test_folders_named_like_images_and_broken_links_are_kept_for_the_error_list(tree):
    """Not skipped silently: reading them fails with the reason (the run lists it)."""
    from amg.io import ImageReadError, load_image
    (tree / "album.jpg").mkdir()
    (tree / "album.jpg" / "inner.png").write_bytes(b"x")
    (tree / "gone.png").symlink_to(tree / "deleted.png")
    (tree / "gone_notes").symlink_to(tree / "deleted.txt")  # not named like an image: ignored
    rel = [p.relative_to(tree).as_posix() for p in find_images([tree])]
    assert rel == ["a.PNG", "album.jpg", "album.jpg/inner.png", "b.jpg", "c.jpeg", "gone.png",
                   "sub/d.tif", "sub/deeper/f.bmp", "sub/deeper/g.JPG", "sub/e.webp", "z_dir/h.png"]
    with pytest.raises(ImageReadError, match="album.jpg: a folder, not an image file"):
        load_image(tree / "album.jpg")
    with pytest.raises(ImageReadError, match=r"gone.png: broken symbolic link \(to .*deleted.png"):
        load_image(tree / "gone.png")


def test_glob_pattern_keeps_broken_links_but_not_folders(tree):
    from amg.dataset.inputs import collect_images
    (tree / "gone.png").symlink_to(tree / "deleted.png")
    (tree / "pngs.png").mkdir()
    rel = [p.relative_to(tree).as_posix() for p in collect_images([tree], pattern="*.png")]
    assert rel == ["gone.png", "pngs.png"]
    rel = [p.relative_to(tree).as_posix() for p in collect_images([tree], pattern="*")]
    assert "sub" not in rel and "gone.png" in rel and "pngs.png" in rel


def test_explicit_broken_link_is_named(tree):
    (tree / "gone.jpg").symlink_to(tree / "deleted.jpg")
    with pytest.raises(FileNotFoundError, match=r"input not found: .*gone.jpg \(a broken symbolic "
                                                r"link to .*deleted.jpg\)"):
        find_images([tree / "gone.jpg"])

