"""Tests for models/download.py against a local HTTP server."""

import functools
import hashlib
import http.server
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import REFERENCE_DIR, ROOT, needs_reference

SCRIPT = os.path.join(ROOT, "models", "download.py")

spec = importlib.util.spec_from_file_location("download", SCRIPT)
download = importlib.util.module_from_spec(spec)
spec.loader.exec_module(download)
RELEASED_FILES = dict(download.FILES)   # the tests below patch the module's table

SMALL = "ghostnet_checkpoint.index"
BIG = "ghostnet_checkpoint.data-00000-of-00001"
CONTENT = {SMALL: b"index bytes\n" * 100, BIG: os.urandom(3 * (1 << 20) + 123)}


def blob_id(data):
    """Git blob id of bytes, computed independently of the module."""
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static file handler that counts requests and can misbehave on demand."""

    def do_GET(self):
        self.server.requests.append(self.path)
        mode = self.server.mode
        if mode == "slow":
            time.sleep(1)
            return
        if mode == "truncate":
            with open(os.path.join(self.directory, self.path.lstrip("/")), "rb") as f:
                body = f.read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + 1000))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serve the fake checkpoint files from a temp dir; yield the server."""
    root = tmp_path / "served"
    root.mkdir()
    for name, data in CONTENT.items():
        (root / name).write_bytes(data)
    srv = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    srv.requests, srv.mode, srv.root = [], None, root
    srv.base_url = "http://127.0.0.1:%d/" % srv.server_address[1]
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def fake_table(monkeypatch):
    """Point the module's table at the fake files."""
    monkeypatch.setattr(download, "FILES", {n: blob_id(d) for n, d in CONTENT.items()})


@pytest.fixture
def dest(tmp_path):
    """Empty destination folder."""
    d = tmp_path / "dest"
    d.mkdir()
    return d


def run_main(server, dest, *extra):
    """Call main() against the test server."""
    return download.main(["--base-url", server.base_url, "--dest", str(dest),
                          "--timeout", "5", *extra])


def test_blob_id_matches_git(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    path = tmp_path / "f"
    path.write_bytes(CONTENT[SMALL])
    out = subprocess.run(["git", "hash-object", str(path)], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == blob_id(CONTENT[SMALL]) == download.git_blob_id(str(path))


def test_good_download(server, dest, capsys):
    assert run_main(server, dest) == 0
    assert sorted(os.listdir(dest)) == sorted(CONTENT)
    for name, data in CONTENT.items():
        assert (dest / name).read_bytes() == data
    out = capsys.readouterr().out
    assert out.count("verified") == 2 and str(len(CONTENT[BIG])) in out


def test_corrupted_file_fails(server, dest):
    (server.root / BIG).write_bytes(bytes([CONTENT[BIG][0] ^ 1]) + CONTENT[BIG][1:])
    with pytest.raises(SystemExit) as exc:
        run_main(server, dest)
    msg = str(exc.value.code)
    assert BIG in msg and "expected " + blob_id(CONTENT[BIG]) in msg
    assert os.listdir(dest) == [SMALL]


def test_truncated_transfer_fails(server, dest):
    server.mode = "truncate"
    with pytest.raises(SystemExit) as exc:
        run_main(server, dest)
    assert SMALL in str(exc.value.code) and "truncated" in str(exc.value.code)
    assert os.listdir(dest) == []


def test_404_names_url(server, dest):
    (server.root / SMALL).unlink()
    with pytest.raises(SystemExit) as exc:
        run_main(server, dest)
    assert server.base_url + SMALL in str(exc.value.code) and "404" in str(exc.value.code)
    assert os.listdir(dest) == []


def test_timeout_fails(server, dest):
    server.mode = "slow"
    with pytest.raises(SystemExit) as exc:
        run_main(server, dest, "--timeout", "0.2")
    assert "timed out" in str(exc.value.code)
    assert os.listdir(dest) == []


def test_connection_refused_fails(dest):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SystemExit) as exc:
        download.main(["--base-url", "http://127.0.0.1:%d/" % port, "--dest", str(dest)])
    assert "connection failed" in str(exc.value.code)
    assert os.listdir(dest) == []


def test_second_run_downloads_nothing(server, dest, capsys):
    assert run_main(server, dest) == 0
    count = len(server.requests)
    assert run_main(server, dest) == 0
    assert len(server.requests) == count
    assert capsys.readouterr().err.count("already present, verified") == 2


def test_wrong_present_file_replaced(server, dest):
    (dest / SMALL).write_bytes(b"stale")
    assert run_main(server, dest) == 0
    assert (dest / SMALL).read_bytes() == CONTENT[SMALL]
    assert server.requests == ["/" + SMALL, "/" + BIG]


def test_fetch_direct(server, dest):
    path = str(dest / SMALL)
    download.fetch(server.base_url + SMALL, path, blob_id(CONTENT[SMALL]), timeout=5)
    assert download.git_blob_id(path) == blob_id(CONTENT[SMALL])


def cli(*args):
    """Run the script as a subprocess."""
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True,
                          text=True, timeout=30)


def test_cli_failure_exit_status(server, dest):
    server.mode = "truncate"
    proc = cli("--base-url", server.base_url, "--dest", str(dest), "--timeout", "5")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and server.base_url + SMALL in proc.stderr
    assert os.listdir(dest) == []


def test_cli_404_exit_status(server, dest):
    shutil.rmtree(server.root)
    proc = cli("--base-url", server.base_url.rstrip("/"), "--dest", str(dest))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "HTTP 404" in proc.stderr
    assert os.listdir(dest) == []


@needs_reference
def test_table_matches_the_released_index():
    index = os.path.join(REFERENCE_DIR, SMALL)
    assert download.git_blob_id(index) == RELEASED_FILES[SMALL]
    with open(index, "rb") as f:
        assert blob_id(f.read()) == RELEASED_FILES[SMALL]
