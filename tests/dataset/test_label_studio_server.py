"""Our Label Studio export through a real Label Studio server.

The server is the ``label-studio`` package from the index, in its own venv (``.ci/tool-venvs``),
started here as a subprocess on a free loopback port with its own SQLite data folder,
local-files serving on, and a user and API token made for this test. Through label-studio-sdk
(in that venv: tool_scripts/label_studio_roundtrip.py) a project is created with our
labelling config, our tasks are imported with their predictions and a local storage is added on
the photo folder; everything is read back through the API. Every brush mask read back must
decode (label-studio-converter's decoder here, the SDK's converter there) to exactly our
pixels, every polygon to our polygons' pixels, nothing dropped, and every image URL must serve
the photo. If the server cannot start, the test fails.

Real photos with the real MobileSAM weights on an 8 x 8 grid (seconds per photo).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from amg.dataset.cli import main
from amg.dataset.label_studio import labeling_config
from amg.dataset.outputs import decode_mask
from amg.dataset.polygons import DEFAULT_MIN_POLYGON_AREA, mask_to_polygons

from ..conftest import shared_path
from .tool_envs import run_tool_script, tool_python

brush = pytest.importorskip("label_studio_converter.brush", reason="the decoder needs the test extra")

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PHOTOS = ("dog.jpg", "groceries.jpg")
STARTUP_SECONDS = 600  # migrations of a fresh database take 1-2 minutes on 2 busy cores


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """``files/photos/`` (the photos; ``files`` is the server's local-files document root)."""
    base = tmp_path_factory.mktemp("label_studio")
    photos = base / "files" / "photos"
    photos.mkdir(parents=True)
    for n in PHOTOS:
        shutil.copy(shared_path("images", n), photos / n)
    return base


@pytest.fixture(scope="module")
def server(base):
    """A Label Studio server of our own: ``{"url", "token"}``; stopped after the module."""
    bin_dir = tool_python("label-studio").parent
    token = secrets.token_hex(20)
    port = free_port()
    data = base / "ls-data"
    env = {**os.environ,
           "LABEL_STUDIO_BASE_DATA_DIR": str(data),
           "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(base / "files"),
           # nothing leaves this machine: no update check, error reports or analytics
           "LATEST_VERSION_CHECK": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
           "COLLECT_ANALYTICS": "false",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("VIRTUAL_ENV", None)
    log = open(base / "label-studio.log", "wb")
    proc = subprocess.Popen(
        [str(bin_dir / "label-studio"), "start", "--no-browser", "--data-dir", str(data),
         "--internal-host", "127.0.0.1", "--port", str(port), "--username", "tester@example.com",
         "--password", secrets.token_hex(12), "--user-token", token, "--enable-legacy-api-token"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=base)
    url = f"http://127.0.0.1:{port}"
    try:
        yield {"url": url, "token": token, "proc": proc, "log": base / "label-studio.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def wait_until_up(server) -> None:
    """Wait for ``/health``; fail (with the server's log) if it exits or does not come up."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < STARTUP_SECONDS:
        if server["proc"].poll() is not None:
            pytest.fail(f"label-studio exited with {server['proc'].returncode}:\n"
                        f"{server['log'].read_text(errors='replace')[-4000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(server["url"] + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        time.sleep(2)
    pytest.fail(f"label-studio did not answer /health within {STARTUP_SECONDS} s:\n"
                f"{server['log'].read_text(errors='replace')[-4000:]}")


def export(base: Path, segmentation: str) -> Path:
    out = base / f"out-{segmentation}"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        rc = main([str(base / "files" / "photos"), "-o", str(out), "--format", "json,label-studio",
                   "--segmentation", segmentation, "--points-per-side", "8", "--threads", "1",
                   "--no-progress"])
    assert rc == 0, stdout.getvalue()
    return out


@pytest.fixture(scope="module")
def roundtrips(base, server):
    """Both exports (brush masks, polygons), each through its own project: ``{kind: (out
    folder, readback, SDK-decoded masks)}``. The exports run while the server migrates."""
    outs = {kind: export(base, kind) for kind in ("rle", "polygon")}
    wait_until_up(server)
    result = {}
    for kind, out in outs.items():
        rb_dir = base / f"readback-{kind}"
        rb_dir.mkdir()
        run_tool_script("label-studio", "label_studio_roundtrip.py", server["url"], server["token"],
                        str(out / "label-studio" / "labeling-config.xml"),
                        str(out / "label-studio" / "tasks.json"), str(base / "files" / "photos"),
                        str(rb_dir))
        readback = json.loads((rb_dir / "readback.json").read_text())
        with np.load(rb_dir / "sdk_masks.npz") as z:
            sdk_masks = {k: z[k] for k in z.files}
        result[kind] = (out, readback, sdk_masks)
    return result


def check_project_and_images(out: Path, readback: dict, kind: str, base: Path) -> list[dict]:
    """The project, the tasks' data and images; returns our tasks."""
    ours = json.loads((out / "label-studio" / "tasks.json").read_text())
    assert readback["user"] == "tester@example.com"
    assert readback["project"]["label_config"].strip() == labeling_config("object", kind).strip()
    assert readback["project"]["task_number"] == len(PHOTOS) == len(readback["tasks"]) == len(ours)
    for name, task, mine, image in zip(PHOTOS, readback["tasks"], ours, readback["images"]):
        assert task["data"] == mine["data"] == {"image": f"/data/local-files/?d=photos/{name}"}
        photo = (base / "files" / "photos" / name).read_bytes()
        assert image["status"] == 200, image
        assert image["sha256"] == hashlib.sha256(photo).hexdigest()
        (pred,) = task["predictions"]
        (my_pred,) = mine["predictions"]
        assert pred["model_version"] == my_pred["model_version"] == "segment-everything/mobile_sam"
        assert pred["score"] == pytest.approx(my_pred["score"])
        assert pred["result"] == my_pred["result"]  # every region arrived as sent
    return ours


def test_brush_masks_arrive_pixel_exact(roundtrips, base):
    out, readback, sdk_masks = roundtrips["rle"]
    check_project_and_images(out, readback, "rle", base)
    for k, (name, task) in enumerate(zip(PHOTOS, readback["tasks"])):
        records = json.loads((out / f"{Path(name).stem}.json").read_text())
        results = task["predictions"][0]["result"]
        assert len(results) == len(records) > 0  # one region per mask, none dropped
        for i, (r, rec) in enumerate(zip(results, records)):
            assert r["id"] == f"m{i}" and r["type"] == "brushlabels"
            assert r["value"]["format"] == "rle" and r["value"]["brushlabels"] == ["object"]
            assert r["score"] == rec["predicted_iou"]
            h, w = rec["segmentation"]["size"]
            assert (r["original_height"], r["original_width"]) == (h, w)
            mask = decode_mask(rec["segmentation"])
            rgba = brush.decode_rle(bytes(r["value"]["rle"])).reshape(h, w, 4)
            np.testing.assert_array_equal(rgba[..., 3] > 0, mask, err_msg=f"{name} m{i}")
            np.testing.assert_array_equal(sdk_masks[f"{k}/m{i}"], mask, err_msg=f"{name} m{i} (SDK)")
    assert len(sdk_masks) == sum(len(t["predictions"][0]["result"]) for t in readback["tasks"])


def test_polygons_arrive_with_every_fragment(roundtrips, base):
    out, readback, _ = roundtrips["polygon"]
    check_project_and_images(out, readback, "polygon", base)
    multi = 0
    for name, task in zip(PHOTOS, readback["tasks"]):
        records = json.loads((out / f"{Path(name).stem}.json").read_text())
        results = task["predictions"][0]["result"]
        expected_ids = []
        for i, rec in enumerate(records):
            polys = mask_to_polygons(decode_mask(rec["segmentation"]), DEFAULT_MIN_POLYGON_AREA)
            expected_ids += [f"m{i}-{k}" for k in range(len(polys))]
            multi += len(polys) > 1
        assert [r["id"] for r in results] == expected_ids  # one region per fragment
        for i, rec in enumerate(records):
            h, w = rec["segmentation"]["size"]
            mask = decode_mask(rec["segmentation"])
            mine = [r for r in results if r["id"].startswith(f"m{i}-")]
            union = np.zeros((h, w), bool)
            for r in mine:
                assert r["type"] == "polygonlabels" and r["value"]["closed"] is True
                assert r["value"]["polygonlabels"] == ["object"] and r["score"] == rec["predicted_iou"]
                xy = (np.asarray(r["value"]["points"]) * (w / 100.0, h / 100.0)).ravel().tolist()
                union |= mask_utils.decode(mask_utils.frPyObjects([xy], h, w))[..., 0].astype(bool)
            # the mask's pixels, less only fragments and holes under the polygon tolerance
            expected = np.zeros((h, w), bool)
            for p in mask_to_polygons(mask, DEFAULT_MIN_POLYGON_AREA):
                expected |= mask_utils.decode(mask_utils.frPyObjects([p], h, w))[..., 0].astype(bool)
            np.testing.assert_array_equal(union, expected, err_msg=f"{name} m{i}")
            assert (union ^ mask).sum() <= 0.01 * mask.sum() + 10, f"{name} m{i}"
    assert multi > 0  # the photos have multi-part masks: their fragments all arrived
