"""Processes a fault-injection test starts, waits for and looks for (Linux /proc)."""
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))     # as conftest's: tests_horovod imports this too
MAIN_PY = os.path.join(ROOT, 'main.py')
PATIENCE = 300      # seconds: a guard against a hung test, not a measurement


def start(log_path, *flags, command=(sys.executable, MAIN_PY)):
    """`command` (main.py) with `flags` and --verbose (every log line), its output going to `log_path`:
    the Popen."""
    with open(log_path, 'w') as log:
        return subprocess.Popen([*command, *flags, '--verbose'], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED='1'))


def wait_for_line(proc, log_path, pattern):
    """Wait until `log_path` has a line matching `pattern` (a regex) while `proc` runs."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline and proc.poll() is None:
        with open(log_path) as f:
            if re.search(pattern, f.read()):
                return
        time.sleep(0.05)
    raise AssertionError('{!r} never appeared:\n{}'.format(pattern, open(log_path).read()[-5000:]))


def finish(proc, log_path):
    """(exit status, output) once `proc` ends."""
    status = proc.wait(PATIENCE)
    with open(log_path) as f:
        return status, f.read()


def children(pid):
    """The pids of the processes whose parent is `pid`."""
    return [int(p) for task in os.listdir('/proc/{}/task'.format(pid))
            for p in open('/proc/{}/task/{}/children'.format(pid, task)).read().split()]


def processes_naming(text):
    """The pids of live processes whose command line contains `text`."""
    found = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/{}/cmdline'.format(pid), 'rb') as f:
                cmdline = f.read().replace(b'\0', b' ').decode(errors='replace')
            with open('/proc/{}/stat'.format(pid)) as f:
                zombie = f.read().rsplit(')', 1)[1].split()[0] == 'Z'
        except OSError:
            continue
        if text in cmdline and not zombie:
            found.append(int(pid))
    return found


def wait_until_gone(text):
    """The processes still naming `text` after they had PATIENCE seconds to end (none, hopefully)."""
    deadline = time.monotonic() + PATIENCE
    while processes_naming(text) and time.monotonic() < deadline:
        time.sleep(0.2)
    return processes_naming(text)


def catches(pid, signum):
    """Whether process `pid` has a handler for `signum` (its SigCgt mask in /proc)."""
    with open('/proc/{}/status'.format(pid)) as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith('SigCgt:'))
    return bool(mask >> (signum - 1) & 1)


def wait_until_not_catching(pid, signum):
    """Wait until process `pid` no longer handles `signum` (a forked worker resetting its parent's handlers)."""
    deadline = time.monotonic() + PATIENCE
    while catches(pid, signum) and time.monotonic() < deadline:
        time.sleep(0.05)
