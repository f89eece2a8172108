"""Tests for models/download.py against local HTTP servers: a static one, and a stand-in Hugging Face Hub."""

import errno
import functools
import hashlib
import http.server
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import REFERENCE_DIR, ROOT, needs_reference
from timm_fixtures import FIXTURE, TIMM_MODELS

SCRIPT = os.path.join(ROOT, "models", "download.py")

spec = importlib.util.spec_from_file_location("download", SCRIPT)
download = importlib.util.module_from_spec(spec)
spec.loader.exec_module(download)
RELEASED_FILES = dict(download.FILES)   # the tests below patch the module's tables
RELEASED_FAMILY = dict(download.FAMILY_FILES)

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
    yield from serving(srv)


def serving(srv):
    """Serve `srv` on a thread while the fixture that yields from this is in use."""
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


# --- The Ghost family's files from a stand-in Hugging Face Hub -------------------------------------------

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"   # test data, not a commit on the Hub
V2_100, V2_130 = "ghostnetv2_100", "ghostnetv2_130"
V2_100_REPO, V2_130_REPO = "timm/ghostnetv2_100.in1k", "timm/ghostnetv2_130.in1k"
V2_100_FILE = "ghostnetv2_100.in1k.safetensors"
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>[^?]+)$")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def family_weights(tmp_path, stem=16):
    """Bytes of a small safetensors file laid out like a family file of the given stem width."""
    path = tmp_path / ("weights_%d.safetensors" % stem)
    save_file({"conv_stem.weight": np.zeros((stem, 3, 3, 3), np.float32),
               "classifier.weight": np.zeros((1000, 8), np.float32),
               "classifier.bias": np.zeros(1000, np.float32)}, str(path))
    return path.read_bytes()


class HubHandler(http.server.BaseHTTPRequestHandler):
    """HEAD and GET on /{repo_id}/resolve/{revision}/{filename}, answered as the Hub answers hf_hub_download:
    X-Repo-Commit, ETag (the LFS oid: the content's sha256), Content-Length; X-Error-Code on a 404."""

    def do_HEAD(self):
        self.answer(send_body=False)

    def do_GET(self):
        self.answer(send_body=True)

    def answer(self, send_body):
        hub = self.server
        hub.requests.append((self.command, self.path))
        match = RESOLVE.match(self.path)
        repo, revision, filename = match.group("repo", "revision", "filename") if match else (None,) * 3
        commit = hub.refs.get((repo, revision), revision)
        if not any(key[0] == repo for key in hub.files):
            return self.refuse("RepoNotFound")
        if not any(key[:2] == (repo, commit) for key in hub.files):
            return self.refuse("RevisionNotFound")
        data = hub.files.get((repo, commit, filename))
        if data is None:
            return self.refuse("EntryNotFound", commit)
        self.send_response(200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", '"%s"' % hub.etags.get((repo, commit, filename), sha256(data)))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def refuse(self, error_code, commit=None):
        self.send_response(404)
        self.send_header("X-Error-Code", error_code)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(tmp_path):
    """A stand-in Hub on 127.0.0.1: ghostnetv2_100 at FAKE_COMMIT, ghostnetv2_130 whose main is FAKE_COMMIT."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    srv.files = {(V2_100_REPO, FAKE_COMMIT, "model.safetensors"): family_weights(tmp_path, 16),
                 (V2_130_REPO, FAKE_COMMIT, "model.safetensors"): family_weights(tmp_path, 20)}
    srv.refs = {(V2_130_REPO, "main"): FAKE_COMMIT}
    srv.requests, srv.etags = [], {}
    srv.url = "http://127.0.0.1:%d" % srv.server_address[1]
    yield from serving(srv)


@pytest.fixture
def family_table(hub, monkeypatch):
    """ghostnetv2_100 pinned to FAKE_COMMIT and the sha256 served; ghostnetv2_130 at main, no sha256."""
    table = {V2_100: (V2_100_REPO, FAKE_COMMIT, sha256(hub.files[V2_100_REPO, FAKE_COMMIT, "model.safetensors"]),
                      "ghostnetv2", 1.0),
             V2_130: (V2_130_REPO, "main", None, "ghostnetv2", 1.3)}
    monkeypatch.setattr(download, "FAMILY_FILES", table)
    return table


@pytest.fixture
def cache(tmp_path):
    """huggingface_hub's cache for the test, never the user's."""
    return tmp_path / "hf_cache"


def run_family(hub, dest, cache, *names):
    """Call main() for family files against the stand-in Hub."""
    return download.main([*names, "--endpoint", hub.url, "--cache_dir", str(cache), "--dest", str(dest),
                          "--timeout", "5"])


def cached_blobs(cache):
    return [p for p in cache.rglob("blobs/*") if p.is_file()]


def test_family_download_prints_the_eval_command(hub, family_table, dest, cache, capsys):
    assert run_family(hub, dest, cache, V2_100) == 0
    assert os.listdir(dest) == [V2_100_FILE]
    assert (dest / V2_100_FILE).read_bytes() == hub.files[V2_100_REPO, FAKE_COMMIT, "model.safetensors"]
    out = capsys.readouterr().out
    assert "verified against the pinned sha256" in out
    assert ("python main.py --eval --arch ghostnetv2 --width_ratio 1.0 --load %s --data_dir /path/to/imagenet"
            % (dest / V2_100_FILE)) in out


def test_family_download_requests_the_pinned_revision(hub, family_table, dest, cache):
    assert run_family(hub, dest, cache, V2_100) == 0
    pinned = "/%s/resolve/%s/model.safetensors" % (V2_100_REPO, FAKE_COMMIT)
    assert {path for _, path in hub.requests} == {pinned}
    assert {method for method, _ in hub.requests} == {"HEAD", "GET"}


def test_family_second_run_downloads_nothing(hub, family_table, dest, cache, capsys):
    assert run_family(hub, dest, cache, V2_100) == 0
    count = len(hub.requests)
    assert run_family(hub, dest, cache, V2_100) == 0
    assert len(hub.requests) == count
    assert "already present, verified" in capsys.readouterr().err


def test_family_unpinned_revision_checked_against_the_lfs_oid(hub, family_table, dest, cache, capsys):
    assert run_family(hub, dest, cache, V2_130 + ".in1k") == 0
    captured = capsys.readouterr()
    assert "verified against the Hub's LFS oid" in captured.out
    assert "--arch ghostnetv2 --width_ratio 1.3 " in captured.out
    assert "not pinned to a commit: main was %s" % FAKE_COMMIT in captured.err


@pytest.mark.parametrize("missing, message", [("file", "model.safetensors not found at revision " + FAKE_COMMIT),
                                              ("revision", "revision %s not found" % FAKE_COMMIT)])
def test_family_404_is_one_error(hub, family_table, dest, cache, missing, message):
    if missing == "file":
        hub.files[V2_100_REPO, FAKE_COMMIT, "README.md"] = b"keeps the revision"
    del hub.files[V2_100_REPO, FAKE_COMMIT, "model.safetensors"]
    hub.files[V2_100_REPO, "f" * 40, "model.safetensors"] = b"another revision"
    with pytest.raises(SystemExit) as exc:
        run_family(hub, dest, cache, V2_100)
    assert str(exc.value.code) == "error: %s: %s@%s: %s" % (V2_100_FILE, V2_100_REPO, FAKE_COMMIT, message)
    assert os.listdir(dest) == []


@pytest.mark.parametrize("pinned", [True, False])
def test_family_hash_mismatch_leaves_nothing(hub, family_table, dest, cache, pinned):
    name = V2_100 if pinned else V2_130
    repo = family_table[name][0]
    if pinned:   # the Hub serves other bytes than the pinned sha256's
        hub.files[repo, FAKE_COMMIT, "model.safetensors"] = family_weights(cache.parent, 24)
    else:        # the bytes do not match the LFS oid the Hub announces
        hub.etags[repo, FAKE_COMMIT, "model.safetensors"] = "a" * 64
    with pytest.raises(SystemExit) as exc:
        run_family(hub, dest, cache, name)
    msg = str(exc.value.code)
    assert msg.startswith("error: %s.safetensors: " % repo.split("/")[1]) and "sha256 mismatch" in msg
    assert ("pinned sha256" if pinned else "Hub's LFS oid") in msg and "\n" not in msg
    assert os.listdir(dest) == [] and cached_blobs(cache) == []


@pytest.mark.parametrize("content, message", [("stem", "not the expected network"),
                                              ("garbage", "not a safetensors file")])
def test_family_file_of_another_network_refused(hub, family_table, dest, cache, monkeypatch, content, message):
    data = family_weights(cache.parent, 24) if content == "stem" else b"not safetensors" * 10
    hub.files[V2_100_REPO, FAKE_COMMIT, "model.safetensors"] = data
    table = dict(family_table)
    table[V2_100] = table[V2_100][:2] + (sha256(data),) + table[V2_100][3:]
    monkeypatch.setattr(download, "FAMILY_FILES", table)
    with pytest.raises(SystemExit) as exc:
        run_family(hub, dest, cache, V2_100)
    assert V2_100_FILE in str(exc.value.code) and message in str(exc.value.code)
    assert os.listdir(dest) == []


def test_family_disk_failure_leaves_nothing(hub, family_table, dest, cache, monkeypatch):
    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(download.shutil, "copyfileobj", disk_full)
    with pytest.raises(SystemExit) as exc:
        run_family(hub, dest, cache, V2_100)
    assert str(exc.value.code).startswith("error: %s: " % V2_100_FILE)
    assert "No space left on device" in str(exc.value.code)
    assert os.listdir(dest) == []


def test_family_names():
    assert download.parse_args(["ghostnetv2_100.in1k", "ghostnet_100"]).names == ["ghostnetv2_100", "ghostnet_100"]
    assert download.parse_args(["--all"]).names == list(download.FAMILY_FILES)
    assert download.parse_args([]).names == []
    with pytest.raises(SystemExit) as exc:
        download.parse_args(["ghostnetv9_100"])
    assert exc.value.code == 2


def test_hub_failure_messages():
    from huggingface_hub.errors import LocalEntryNotFoundError
    unreachable = LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub\n...")
    unreachable.__cause__ = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert download.hub_failure(unreachable, "main") == "Connection refused"
    assert download.hub_failure(OSError(errno.ENOSPC, "No space left on device"), "main") == \
        "No space left on device"
    assert download.hub_failure(ValueError("two\nlines"), "main") == "ValueError: two"


def test_family_table_is_timms():
    """Each entry: timm's repo for its name, a commit id or main, a sha256 or None, the --arch and
    --width_ratio of that timm model (the table of tests/timm_fixtures.py), and timm's stem width."""
    with open(FIXTURE) as f:
        timm_keys = {name: dict(entry["keys"]) for name, entry in json.load(f).items()}
    for name, (repo_id, revision, sha, arch, width) in RELEASED_FAMILY.items():
        assert repo_id == "timm/%s.in1k" % name
        assert re.fullmatch("[0-9a-f]{40}", revision) or revision == "main"
        assert sha is None or re.fullmatch("[0-9a-f]{64}", sha)
        assert TIMM_MODELS[arch, width] == name
        assert timm_keys[name]["conv_stem.weight"][0] == download.stem_channels(width)
        assert timm_keys[name]["classifier.weight"][0] == 1000


def hub_cli(hub, tmp_path, *args):
    """Run the script as a subprocess with the stand-in Hub and a temporary HF_HOME, the real table."""
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"),
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    env.pop("HF_TOKEN", None)
    env.pop("HF_HUB_OFFLINE", None)
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=60, env=env)


def test_cli_family_download(hub, tmp_path, dest):
    proc = hub_cli(hub, tmp_path, V2_130, "--dest", str(dest))   # the real table: main, no sha256
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(dest) == ["ghostnetv2_130.in1k.safetensors"]
    assert "--arch ghostnetv2 --width_ratio 1.3 --load " in proc.stdout
    assert list((tmp_path / "hf_home" / "hub").iterdir())


def test_cli_family_failures_are_one_line(hub, tmp_path, dest):
    """ghostnet_100 is not on the stand-in Hub (404); its pinned sha256 is not that of the bytes served."""
    proc = hub_cli(hub, tmp_path, "ghostnet_100", "--dest", str(dest))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if not line.startswith("downloading ")] == [
        "error: ghostnet_100.in1k.safetensors: timm/ghostnet_100.in1k@%s: repository not found (or private)"
        % RELEASED_FAMILY["ghostnet_100"][1]]
    hub.files["timm/ghostnet_100.in1k", RELEASED_FAMILY["ghostnet_100"][1], "model.safetensors"] = \
        family_weights(tmp_path, 16)
    proc = hub_cli(hub, tmp_path, "ghostnet_100", "--dest", str(dest))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(errors) == 1
    assert "sha256 mismatch: expected %s" % RELEASED_FAMILY["ghostnet_100"][2] in errors[0]
    assert os.listdir(dest) == []
