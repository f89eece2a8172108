"""Download and verify the released GhostNet TensorFlow checkpoint."""

import argparse
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request

BASE_URL = ("https://github.com/huawei-noah/Efficient-AI-Backbones/raw/master/"
            "ghostnet_tensorflow/models/")

# File name -> git blob id (what `git hash-object FILE` prints).
FILES = {
    "ghostnet_checkpoint.index": "bfcadbffd51610ea0e712aac6fe3bd57760e019a",
    "ghostnet_checkpoint.data-00000-of-00001": "c85677b5d8c57b3577129a8f3378e08119d566e4",
}

CHUNK = 1 << 16


class DownloadError(Exception):
    """A transfer or verification failure, with a message for the user."""


def git_blob_id(path):
    """Return the git blob id (SHA-1 of b'blob SIZE\\0' + content) of a file."""
    sha = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _progress(name, done, total):
    """Write a one-line progress update for NAME to stderr."""
    of = "/%d" % total if total is not None else ""
    sys.stderr.write("\r  %s: %d%s bytes" % (name, done, of))
    sys.stderr.flush()


def _copy(response, out, name):
    """Stream RESPONSE into file OUT with progress; return (bytes, expected)."""
    length = response.headers.get("Content-Length")
    total = int(length) if length is not None else None
    done, shown = 0, -1
    for chunk in iter(lambda: response.read(CHUNK), b""):
        out.write(chunk)
        done += len(chunk)
        if done >> 20 != shown:
            shown = done >> 20
            _progress(name, done, total)
    _progress(name, done, total)
    sys.stderr.write("\n")
    return done, total


def _transfer(url, tmp_path, timeout):
    """Download URL into TMP_PATH; raise DownloadError on any failure."""
    name = os.path.basename(url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, \
                open(tmp_path, "wb") as out:
            done, total = _copy(response, out, name)
    except urllib.error.HTTPError as e:
        e.close()
        raise DownloadError("HTTP %d %s" % (e.code, e.reason)) from None
    except urllib.error.URLError as e:
        raise DownloadError("connection failed: %s" % (e.reason,)) from None
    except TimeoutError:
        raise DownloadError("timed out after %s s" % timeout) from None
    except (OSError, http.client.HTTPException) as e:
        raise DownloadError("transfer failed: %s" % (str(e) or type(e).__name__)) from None
    if total is not None and done != total:
        raise DownloadError("truncated body: got %d of %d bytes" % (done, total))


def fetch(url, dest_path, blob_id, timeout=60):
    """Download URL to DEST_PATH via a temp file, verifying its git blob id."""
    name = os.path.basename(dest_path)
    fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=".part",
                               dir=os.path.dirname(os.path.abspath(dest_path)))
    os.close(fd)
    try:
        _transfer(url, tmp, timeout)
        got = git_blob_id(tmp)
        if got != blob_id:
            raise DownloadError("blob id mismatch: expected %s, got %s" % (blob_id, got))
        os.replace(tmp, dest_path)
    except DownloadError as e:
        os.remove(tmp)
        raise DownloadError("%s: download of %s failed: %s" % (name, url, e)) from None
    except BaseException:
        os.remove(tmp)
        raise


def ensure(name, blob_id, dest, base_url, timeout):
    """Make DEST/NAME hold a file with BLOB_ID, downloading only if needed."""
    path = os.path.join(dest, name)
    if os.path.exists(path):
        got = git_blob_id(path)
        if got == blob_id:
            print("%s: already present, verified" % path, file=sys.stderr)
            return path
        print("%s: present but blob id %s != expected %s, re-downloading"
              % (path, got, blob_id), file=sys.stderr)
        os.remove(path)
    url = base_url + name
    print("downloading %s" % url, file=sys.stderr)
    fetch(url, path, blob_id, timeout)
    return path


def parse_args(argv=None):
    """Parse command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dest", default=os.path.dirname(os.path.abspath(__file__)),
                   help="destination folder (default: the folder of this script)")
    p.add_argument("--base_url", "--base-url", default=BASE_URL,
                   help="URL of the folder holding the files (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=60,
                   help="network timeout in seconds (default: %(default)s)")
    return p.parse_args(argv)


def main(argv=None):
    """Fetch every file in FILES into --dest; raise SystemExit on failure."""
    args = parse_args(argv)
    base_url = args.base_url if args.base_url.endswith("/") else args.base_url + "/"
    os.makedirs(args.dest, exist_ok=True)
    try:
        paths = [ensure(n, b, args.dest, base_url, args.timeout) for n, b in FILES.items()]
    except DownloadError as e:
        raise SystemExit("error: %s" % e) from None
    for path in paths:
        print("%s: %d bytes, verified" % (path, os.path.getsize(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
