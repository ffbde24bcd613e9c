"""Runs in the Label Studio venv (label-studio-sdk): a project with our labelling config, our
tasks imported with their predictions, a local storage on the image folder, then everything
read back through the API.

    python label_studio_roundtrip.py BASE_URL TOKEN CONFIG.xml TASKS.json IMAGE_DIR OUT_DIR

Writes OUT_DIR/readback.json: ``{"project": {...}, "tasks": [{"data", "predictions":
[{"model_version", "score", "result"}]}], "images": [{"url", "status", "bytes", "sha256"}]}`` in task-id
order, and OUT_DIR/sdk_masks.npz: every brush result decoded with the SDK's own converter
(``label_studio_sdk.converter.brush.decode_rle``; key ``<task position>/<result id>``, the
alpha channel > 0).
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter.brush import decode_rle


def main() -> None:
    base_url, token, config, tasks_file, image_dir, out_dir = sys.argv[1:7]
    out = Path(out_dir)
    ls = LabelStudio(base_url=base_url, api_key=token)
    me = ls.users.whoami()
    label_config = Path(config).read_text()
    project = ls.projects.create(title="segment-everything pre-labels", label_config=label_config)
    ls.import_storage.local.create(project=project.id, path=image_dir, use_blob_urls=False,
                                   title="images")
    tasks = json.loads(Path(tasks_file).read_text())
    ls.projects.import_tasks(id=project.id, request=tasks)
    stored = ls.projects.get(id=project.id)
    got = sorted(ls.tasks.list(project=project.id, fields="all"), key=lambda t: t.id)
    readback, images, masks = [], [], {}
    for k, t in enumerate(got):
        preds = []
        for p in ls.predictions.list(task=t.id):
            preds.append({"model_version": p.model_version, "score": p.score, "result": p.result})
            for r in p.result:
                if r["type"] == "brushlabels":
                    h, w = r["original_height"], r["original_width"]
                    rgba = decode_rle(r["value"]["rle"]).reshape(h, w, 4)
                    masks[f"{k}/{r['id']}"] = rgba[..., 3] > 0
        readback.append({"data": t.data, "predictions": preds})
        url = base_url + t.data["image"]
        resp = requests.get(url, headers={"Authorization": f"Token {token}"}, timeout=60)
        images.append({"url": t.data["image"], "status": resp.status_code, "bytes": len(resp.content),
                       "sha256": hashlib.sha256(resp.content).hexdigest()})
    (out / "readback.json").write_text(json.dumps({
        "user": me.email,
        "project": {"id": stored.id, "label_config": stored.label_config,
                    "task_number": stored.task_number},
        "tasks": readback, "images": images}))
    np.savez_compressed(out / "sdk_masks.npz", **masks)


if __name__ == "__main__":
    main()
