"""Downloads: resume with HTTP Range, checksum verification, mirrors, offline failure.

A server on 127.0.0.1 (this machine only) serves the file; nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from rsis.download import download, extract
from rsis.errors import UserError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _RangeHandler(BaseHTTPRequestHandler):
    requests: ClassVar[list[str | None]] = []

    def do_GET(self):
        if self.path != "/data.bin":
            self.send_error(404)
            return
        header = self.headers.get("Range")
        type(self).requests.append(header)
        start = int(header.removeprefix("bytes=").rstrip("-")) if header else 0
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(len(PAYLOAD) - start))
        self.end_headers()
        self.wfile.write(PAYLOAD[start:])

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _RangeHandler.requests = []
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def test_resumes_a_partial_download(server, tmp_path):
    out = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:1000])
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    download([f"{server}/data.bin"], out, sha256=digest, timeout=5)
    assert out.read_bytes() == PAYLOAD
    assert _RangeHandler.requests == ["bytes=1000-"]
    assert not (tmp_path / "data.bin.part").exists()


def test_falls_back_to_a_mirror(server, tmp_path):
    out = tmp_path / "data.bin"
    download([f"{server}/missing.bin", f"{server}/data.bin"], out, timeout=5)
    assert out.read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_the_download(server, tmp_path):
    out = tmp_path / "data.bin"
    with pytest.raises(UserError, match="does not match the expected 00ff"):
        download([f"{server}/data.bin"], out, sha256="00ff", timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_fails_fast_and_says_where_to_put_the_file(tmp_path):
    out = tmp_path / "refcoco.zip"
    # Port 9 on the loopback has no listener: the connection is refused at once.
    with pytest.raises(UserError, match=r"place it at .*refcoco\.zip"):
        download(["http://127.0.0.1:9/refcoco.zip"], out, timeout=2)
    assert not out.exists()


def test_extract_refuses_members_outside_the_destination(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(UserError, match="outside"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
