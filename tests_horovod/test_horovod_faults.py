"""Faults under Horovod (2 CPU ranks, gloo): a signal to one rank, a SIGKILL of the ranks.

Signals go only to the rank processes this test's horovodrun started, found by their --logdir and
HOROVOD_RANK.
"""
import os
import re
import signal
import sys
import time

import pytest
import tensorflow as tf

pytest.importorskip('horovod')

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'tests'))
from processes import MAIN_PY, finish, processes_naming, start, wait_for_line, wait_until_gone  # noqa: E402
from data.samples import write_sample_dataset  # noqa: E402
from test_horovod_train import horovodrun  # noqa: E402

STEPS, EPOCHS = 20, 3


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return write_sample_dataset(str(tmp_path_factory.mktemp('hvd_faults')), num_classes=4, train_per_class=16,
                                val_per_class=4, image_size=40)


def start_ranks(log, data_dir, logdir):
    """horovodrun of main.py --horovod on 2 ranks, each with 2 data workers: the Popen."""
    return start(log, '--horovod', '--data_dir', data_dir, '--logdir', logdir, '--width_ratio', '0.25',
                 '--image_size', '32', '--batch', '8', '--workers', '2', '--epochs', str(EPOCHS),
                 '--steps_per_epoch', str(STEPS),
                 command=(horovodrun(), '--gloo', '-np', '2', '-H', 'localhost:2', sys.executable, MAIN_PY))


def horovod_rank(pid):
    """HOROVOD_RANK in the environment process `pid` started with (inherited by its forks), or None."""
    with open('/proc/{}/environ'.format(pid), 'rb') as f:
        environ = dict(item.split(b'=', 1) for item in f.read().split(b'\0') if b'=' in item)
    rank = environ.get(b'HOROVOD_RANK')
    return None if rank is None else int(rank)


def parent_pid(pid):
    with open('/proc/{}/stat'.format(pid)) as f:
        return int(f.read().rsplit(')', 1)[1].split()[1])


def python_parents(pids, rank):
    """{pid: parent pid} of those of `pids` that run this Python as rank `rank`, leaving out any that has
    ended since it was listed (a short-lived child)."""
    python, parents = os.path.realpath(sys.executable), {}
    for pid in pids:
        try:
            if os.path.realpath('/proc/{}/exe'.format(pid), strict=True) == python and horovod_rank(pid) == rank:
                parents[pid] = parent_pid(pid)
        except OSError:
            continue
    return parents


def rank_pid(logdir, rank):
    """The pid of rank `rank`'s main.py: the Python process of that rank whose parent is not one (its data
    workers are its children; a shell horovodrun may start it through is not Python)."""
    parents = python_parents(processes_naming(logdir), rank)
    roots = [pid for pid, parent in parents.items() if parent not in parents]
    assert len(roots) == 1, (rank, parents, roots)
    return roots[0]


def test_sigterm_to_one_rank_stops_both_at_the_same_step_and_rank_0_saves(data_dir, tmp_path):
    logdir, log = str(tmp_path / 'log'), str(tmp_path / 'out.txt')
    proc = start_ranks(log, data_dir, logdir)
    wait_for_line(proc, log, r'\[0\]<\w+>:.*Start Epoch 2 ')
    os.kill(rank_pid(logdir, 1), signal.SIGTERM)
    signalled = time.monotonic()
    status, output = finish(proc, log)
    assert time.monotonic() - signalled < 60
    assert status != 0, output[-8000:]
    saved = re.search(r'\[0\]<\w+>:Training stopped by another rank\'s stop request at global step (\d+): saved (\S+); '
                      r'run the same command again', output)
    stopped = re.search(r'\[1\]<\w+>:Training stopped by SIGTERM at global step (\d+): rank 0 saved the checkpoint',
                        output)
    assert saved and stopped, output[-8000:]
    step = int(saved.group(1))
    assert int(stopped.group(1)) == step and STEPS < step < EPOCHS * STEPS and step % STEPS
    assert saved.group(2) == os.path.join(logdir, 'model-{}'.format(step)) == tf.train.latest_checkpoint(logdir)
    assert wait_until_gone(logdir) == []


def test_sigkill_of_the_ranks_leaves_no_data_worker(data_dir, tmp_path):
    logdir, log = str(tmp_path / 'log'), str(tmp_path / 'out.txt')
    proc = start_ranks(log, data_dir, logdir)
    wait_for_line(proc, log, r'\[1\]<\w+>:.*Start Epoch 1 ')
    workers = [pid for pid in processes_naming(logdir) if pid not in (proc.pid, rank_pid(logdir, 0),
                                                                        rank_pid(logdir, 1))]
    assert len(workers) >= 4     # 2 per rank for training; rank 0 also has 2 for validation
    for rank in (0, 1):
        os.kill(rank_pid(logdir, rank), signal.SIGKILL)
    finish(proc, log)
    assert wait_until_gone(logdir) == []
