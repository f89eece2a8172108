"""Download and verify the released GhostNet TensorFlow checkpoint, or the Ghost family's PyTorch weights.

    python models/download.py                   # the TF checkpoint, checked against its git blob ids
    python models/download.py ghostnetv2_100    # family files by name (timm's copies on the Hugging Face Hub)
    python models/download.py --all             # every family file

Family files come through huggingface_hub (its cache, then a copy in --dest) at pinned revisions, are
checked (sha256, safetensors header, stem width, 1000 classes), and the command that evaluates each is printed.
"""

import argparse
import hashlib
import http.client
import os
import re
import shlex
import shutil
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

# The Ghost family's published weights: timm's copies on the Hugging Face Hub, `model.safetensors` in each repo.
# name -> (repo_id, revision, sha256 of model.safetensors or None, main.py --arch, --width_ratio).
# A revision is a commit id where the Hub's pages showed one in full; "main" where they did not (main was
# commit 1b2175a... for ghostnetv2_100; none seen for ghostnetv2_130 and ghostnetv3_100). The one sha256 is
# the LFS oid the Hub lists for ghostnet_100's file; without one, the file is checked against the LFS oid the
# Hub sends with it (its ETag).
FAMILY_FILES = {
    "ghostnet_100": ("timm/ghostnet_100.in1k", "700dcdf6314c1b68f170e6ba1ee85ee94e5b37b5",
                     "8efbcf55d97872c828768b096d4ebebc51f8b7e29623fd3b3933d78cc230e2e2", "ghostnet-pytorch", 1.0),
    "ghostnetv2_100": ("timm/ghostnetv2_100.in1k", "main", None, "ghostnetv2", 1.0),
    "ghostnetv2_130": ("timm/ghostnetv2_130.in1k", "main", None, "ghostnetv2", 1.3),
    "ghostnetv2_160": ("timm/ghostnetv2_160.in1k", "f29f8843944b3f614fbea96f3847e88080f9ed27", None,
                       "ghostnetv2", 1.6),
    "ghostnetv3_100": ("timm/ghostnetv3_100.in1k", "main", None, "ghostnetv3", 1.0),
}
HUB_FILE = "model.safetensors"
DATA_DIR_PLACEHOLDER = "/path/to/imagenet"
COMMIT_ID = re.compile(r"^[0-9a-f]{40}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(Exception):
    """A transfer or verification failure, with a message for the user."""


def hex_digest(path, digest):
    """DIGEST (a hashlib object, maybe fed a header already) updated with the file's content, in hex."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_id(path):
    """Return the git blob id (SHA-1 of b'blob SIZE\\0' + content) of a file."""
    return hex_digest(path, hashlib.sha1(b"blob %d\0" % os.path.getsize(path)))


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


def family_file_name(repo_id):
    """Local name of a family file: 'timm/ghostnetv2_100.in1k' -> 'ghostnetv2_100.in1k.safetensors'."""
    return repo_id.split("/")[-1] + ".safetensors"


def file_sha256(path):
    """Hex SHA-256 of a file's content."""
    return hex_digest(path, hashlib.sha256())


def first_line(error):
    """The first line of an exception's message, or its type's name."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def hub_failure(error, revision):
    """One line saying why huggingface_hub could not fetch the file."""
    from huggingface_hub import errors
    if isinstance(error, errors.RevisionNotFoundError):
        return "revision %s not found" % revision
    if isinstance(error, errors.RemoteEntryNotFoundError):
        return "%s not found at revision %s" % (HUB_FILE, revision)
    if isinstance(error, errors.RepositoryNotFoundError):
        return "repository not found (or private)"
    if isinstance(error, errors.HfHubHTTPError):
        return "HTTP %d from %s" % (error.response.status_code, error.response.url)
    if isinstance(error, errors.LocalEntryNotFoundError) and error.__cause__ is not None:
        return hub_failure(error.__cause__, revision)
    if isinstance(error, OSError) and error.strerror:
        return "%s (%s)" % (error.strerror, error.filename) if error.filename else error.strerror
    return "%s: %s" % (type(error).__name__, first_line(error))


def hub_download(repo_id, revision, args):
    """Fetch model.safetensors of REPO_ID at REVISION into the Hub cache; return its path there."""
    try:
        import huggingface_hub
        from huggingface_hub.utils import logging as hub_logging
    except ImportError:
        raise DownloadError("huggingface_hub is not installed (pip install -r requirements.txt)") from None
    hub_logging.set_verbosity_error()   # the library's warnings would add lines to the one error line
    try:
        return huggingface_hub.hf_hub_download(repo_id, HUB_FILE, revision=revision, cache_dir=args.cache_dir,
                                               endpoint=args.endpoint, etag_timeout=args.timeout)
    except Exception as e:   # the library's network, HTTP and disk errors, whatever their classes
        raise DownloadError(hub_failure(e, revision)) from None


def cached_lfs_oid(cached):
    """The LFS oid (sha256) the Hub sent as the file's ETag: the cache names the blob after it."""
    blob = os.path.basename(os.path.realpath(cached))
    return blob if SHA256_HEX.match(blob) else None


def evict_cached(cached):
    """Remove a bad file from the Hub cache (the blob and the snapshot's link to it)."""
    for path in {os.path.realpath(cached), cached}:
        if os.path.lexists(path):
            os.remove(path)


def verify_cached(cached, sha256):
    """Check the cached file's SHA-256 against SHA256, else the Hub's LFS oid; return (digest, what it matched
    or None). A mismatching file leaves the cache."""
    expected, what = (sha256, "pinned sha256") if sha256 else (cached_lfs_oid(cached), "Hub's LFS oid")
    got = file_sha256(cached)
    if expected is not None and got != expected:
        evict_cached(cached)
        raise DownloadError("sha256 mismatch: expected %s (%s), got %s" % (expected, what, got))
    return got, what if expected else None


def stem_channels(width):
    """Output channels of the stem convolution at WIDTH: 16 * width rounded to a multiple of 4 (timm's)."""
    return int(16 * width + 2) // 4 * 4


def check_safetensors(path, width):
    """Check that PATH is a safetensors file of a 1000-class network with the stem of WIDTH."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework="numpy") as f:
            shapes = {key: f.get_slice(key).get_shape() for key in ("conv_stem.weight", "classifier.weight")
                      if key in f.keys()}
    except SafetensorError as e:
        raise DownloadError("not a safetensors file: %s" % first_line(e)) from None
    stem, classifier = shapes.get("conv_stem.weight"), shapes.get("classifier.weight")
    if not stem or stem[0] != stem_channels(width) or not classifier or classifier[0] != 1000:
        raise DownloadError("not the expected network: conv_stem.weight %s, classifier.weight %s (expected "
                            "[%d, ...] and [1000, ...])" % (stem, classifier, stem_channels(width)))


def install_copy(cached, path, width):
    """Copy CACHED to PATH through a temporary file beside it, checking the copy before it takes the name."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".part",
                                   dir=os.path.dirname(os.path.abspath(path)))
        with os.fdopen(fd, "wb") as out, open(cached, "rb") as src:
            shutil.copyfileobj(src, out, CHUNK)
        check_safetensors(tmp, width)
        os.replace(tmp, path)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def eval_command(path, arch, width):
    """The main.py command that evaluates the family file at PATH."""
    relative = os.path.relpath(path)
    shown = path if relative.startswith(os.pardir) else relative   # models/NAME from the repo's root
    return "python main.py --eval --arch %s --width_ratio %s --load %s --data_dir %s" % (
        arch, width, shlex.quote(shown), DATA_DIR_PLACEHOLDER)


def fetch_family_file(name, args):
    """Make --dest hold family file NAME, checked; print where it is and how to evaluate it."""
    repo_id, revision, sha256, arch, width = FAMILY_FILES[name]
    path = os.path.join(args.dest, family_file_name(repo_id))
    source = "%s@%s" % (repo_id, revision)
    if sha256 and os.path.isfile(path) and file_sha256(path) == sha256:
        print("%s: already present, verified" % path, file=sys.stderr)
        digest, what = sha256, "pinned sha256"
    else:
        print("downloading %s/%s" % (source, HUB_FILE), file=sys.stderr)
        try:
            cached = hub_download(repo_id, revision, args)
            digest, what = verify_cached(cached, sha256)
            install_copy(cached, path, width)
        except (DownloadError, OSError) as e:   # OSError: reading the cache, writing --dest (disk full...)
            raise DownloadError("%s: %s: %s" % (os.path.basename(path), source, e)) from None
        note_unpinned(repo_id, revision, cached)
    checked = "verified against the %s" % what if what else "no sha256 known to check it against"
    print("%s: %d bytes, sha256 %s, %s" % (path, os.path.getsize(path), digest, checked))
    print("  " + eval_command(path, arch, width))
    return path


def note_unpinned(repo_id, revision, cached):
    """Say which commit a branch name resolved to, so that it can be pinned."""
    if not COMMIT_ID.match(revision):
        commit = os.path.basename(os.path.dirname(cached))   # the cache's snapshots/<commit>/model.safetensors
        print("note: %s is not pinned to a commit: %s was %s" % (repo_id, revision, commit), file=sys.stderr)


def family_name(name):
    """NAME as a key of FAMILY_FILES: 'ghostnetv2_100' or timm's 'ghostnetv2_100.in1k'; None if unknown."""
    name = name[:-len(".in1k")] if name.endswith(".in1k") else name
    return name if name in FAMILY_FILES else None


def parse_args(argv=None):
    """Parse command-line arguments; NAMES becomes the list of family files to fetch."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="family files to fetch instead of the TF checkpoint: %s" % ", ".join(FAMILY_FILES))
    p.add_argument("--all", action="store_true", help="fetch every family file")
    p.add_argument("--dest", default=os.path.dirname(os.path.abspath(__file__)),
                   help="destination folder (default: the folder of this script)")
    p.add_argument("--base_url", "--base-url", default=BASE_URL,
                   help="TF checkpoint: URL of the folder holding the files (default: %(default)s)")
    p.add_argument("--endpoint", default=None,
                   help="family files: the Hub's URL (default: $HF_ENDPOINT, else https://huggingface.co)")
    p.add_argument("--cache_dir", "--cache-dir", default=None,
                   help="family files: huggingface_hub's cache (default: its own, under $HF_HOME)")
    p.add_argument("--timeout", type=float, default=60,
                   help="network timeout in seconds (default: %(default)s; for the Hub, of its metadata "
                        "request)")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if family_name(n) is None]
    if unknown:
        p.error("unknown family file %s (choose from %s)" % (", ".join(unknown), ", ".join(FAMILY_FILES)))
    args.names = list(FAMILY_FILES) if args.all else [family_name(n) for n in args.names]
    return args


def fetch_checkpoint(args):
    """Fetch every file in FILES into --dest and print each, verified."""
    base_url = args.base_url if args.base_url.endswith("/") else args.base_url + "/"
    paths = [ensure(n, b, args.dest, base_url, args.timeout) for n, b in FILES.items()]
    for path in paths:
        print("%s: %d bytes, verified" % (path, os.path.getsize(path)))


def main(argv=None):
    """Fetch the TF checkpoint, or the family files named, into --dest; raise SystemExit on failure."""
    args = parse_args(argv)
    try:
        os.makedirs(args.dest, exist_ok=True)
    except OSError as e:
        raise SystemExit("error: %s: cannot create the folder: %s" % (args.dest, e.strerror)) from None
    try:
        if args.names:
            for name in dict.fromkeys(args.names):
                fetch_family_file(name, args)
        else:
            fetch_checkpoint(args)
    except DownloadError as e:
        raise SystemExit("error: %s" % e) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
