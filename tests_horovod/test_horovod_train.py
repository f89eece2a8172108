"""main.py's GhostNet training with --horovod, 2 CPU processes (gloo): the ranks must stay equal.

The ranks broadcast their variables once at the start only (main.get_trainer), and each reads its
own shuffled data: they end equal only because Horovod averaged their gradients.

Rank 1 is given its own, empty log directory (train_ranks.py --other_ranks_logdir), as a rank on
another machine would have: it must neither read nor write a log directory, and on resuming it must
take its starting epoch from the global step rank 0 broadcast (callbacks.ResumeAtGlobalStep). On
one machine, where every rank sees the same --logdir, this is the same code path.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip('horovod')

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from data.samples import write_sample_dataset  # noqa: E402

STEPS = 4
# seconds; a rank waiting forever for the other fails the test instead of hanging it (killing
# horovodrun makes its launcher process terminate the ranks)
TIMEOUT = 300


def horovodrun():
    exe = os.path.join(os.path.dirname(sys.executable), 'horovodrun')
    return exe if os.path.exists(exe) else shutil.which('horovodrun')


def train(out, data_dir, logdir, rank1_logdir, epochs):
    """main.py's training on 2 ranks, each saving its variables under `out`; horovodrun's output.

    Rank 0 logs to `logdir`, rank 1 is given `rank1_logdir` instead.
    """
    cmd = [horovodrun(), '--gloo', '-np', '2', '-H', 'localhost:2',
           sys.executable, os.path.join(HERE, 'train_ranks.py'), str(out),
           '--other_ranks_logdir', str(rank1_logdir),
           '--horovod', '--data_dir', str(data_dir), '--logdir', str(logdir),
           '--width_ratio', '0.25', '--image_size', '32', '--batch', '8', '--workers', '1',
           '--epochs', str(epochs), '--steps_per_epoch', str(STEPS)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=TIMEOUT, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    out.mkdir(parents=True, exist_ok=True)   # a rank that failed early never made it
    (out / 'horovodrun.log').write_text(proc.stdout)
    assert proc.returncode == 0, 'horovodrun failed ({}):\n{}'.format(proc.returncode, proc.stdout[-8000:])
    for rank in (0, 1):
        assert os.path.isfile(str(out / 'rank{}.npz'.format(rank))), proc.stdout[-8000:]
    return proc.stdout


def rank_output(output, rank):
    """The lines horovodrun prefixed with `rank` ("[1]<stderr>:...")."""
    prefix = '[{}]<'.format(rank)
    return '\n'.join(line for line in output.splitlines() if line.startswith(prefix))


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """One epoch of STEPS steps on a 4-class sample.

    {'root', 'data_dir', 'out', 'logdir' (rank 0's), 'rank1_logdir' (empty), 'output'}
    """
    root = tmp_path_factory.mktemp('hvd')
    data_dir = write_sample_dataset(str(root / 'data'), num_classes=4, train_per_class=16,
                                    val_per_class=4, image_size=40)
    out, logdir, rank1_logdir = root / 'epoch1', root / 'train_log', root / 'rank1_log'
    rank1_logdir.mkdir()
    output = train(out, data_dir, logdir, rank1_logdir, epochs=1)
    return dict(root=root, data_dir=data_dir, out=out, logdir=logdir, rank1_logdir=rank1_logdir,
                output=output)


def load(out, name):
    with np.load(str(out / name)) as f:
        return {k: f[k] for k in f.files}


def is_ema(name):
    return name.endswith('/mean/EMA') or name.endswith('/variance/EMA')


def test_ranks_start_from_the_broadcast_values(run):
    init0, init1 = load(run['out'], 'rank0-init.npz'), load(run['out'], 'rank1-init.npz')
    assert sorted(init0) == sorted(init1) and len(init0) > 100
    for name in init0:
        np.testing.assert_array_equal(init0[name], init1[name], err_msg=name)


def test_ranks_agree_after_training(run):
    final0, final1 = load(run['out'], 'rank0.npz'), load(run['out'], 'rank1.npz')
    assert sorted(final0) == sorted(final1)
    assert int(final0['global_step']) == int(final1['global_step']) == STEPS
    assert any(n.endswith('/Momentum') for n in final0)
    for name in final0:
        if not is_ema(name):
            # weights, momentum slots, learning rate, global step: averaged gradients keep them equal
            np.testing.assert_allclose(final0[name], final1[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_training_is_not_vacuous(run):
    init0, final0, final1 = (load(run['out'], n) for n in ('rank0-init.npz', 'rank0.npz', 'rank1.npz'))
    # the weights moved ...
    moved = [n for n in init0 if n.endswith('/W') and not np.array_equal(init0[n], final0[n])]
    assert len(moved) > 10, moved
    # ... and each rank saw its own images: the batch-norm statistics are kept per rank and differ,
    # in the first layer and in most others (some are data-independent: a mean after a batch norm
    # and a 1x1 convolution stays 0; at 32x32 the last blocks see 1x1 maps)
    stem = 'MobileNetV2/Conv2d_0/bn/mean/EMA'
    assert not np.allclose(final0[stem], final1[stem])
    layers = {n[:-len('/mean/EMA')] for n in final0 if n.endswith('/mean/EMA')}
    same = [layer for layer in layers
            if all(np.allclose(final0[layer + s], final1[layer + s]) for s in ('/mean/EMA', '/variance/EMA'))]
    assert len(layers) > 10 and len(same) < len(layers) // 4, same


def test_only_rank_0_logs_validates_and_saves(run):
    logdir = run['logdir']
    assert os.path.isfile(str(logdir / 'model-{}.index'.format(STEPS))), os.listdir(str(logdir))
    log = (logdir / 'log.log').read_text()
    assert 'val-error-top1' in log
    # rank 1 logs this after main.set_logdir: had rank 1 logged to --logdir too, it would be there
    assert 'Rank 1 waiting for initialization' in run['output']
    assert 'Rank 1 waiting for initialization' not in log
    assert len([f for f in os.listdir(str(logdir)) if f.startswith('events.out')]) == 1
    assert os.listdir(str(run['rank1_logdir'])) == []


def test_resume(run):
    """A second run with --epochs 2 in the same log directories: both ranks do epoch 2 only.

    Rank 1's log directory is still empty: it cannot read the epoch there, it must use rank 0's.
    """
    out = run['root'] / 'epoch2'
    output = train(out, run['data_dir'], run['logdir'], run['rank1_logdir'], epochs=2)
    first, final0, final1 = (load(p, n) for p, n in ((run['out'], 'rank0.npz'), (out, 'rank0.npz'),
                                                     (out, 'rank1.npz')))
    init0, init1 = load(out, 'rank0-init.npz'), load(out, 'rank1-init.npz')
    # both start from rank 0's checkpoint of epoch 1 ...
    assert int(init0['global_step']) == int(init1['global_step']) == STEPS
    assert sorted(init0) == sorted(init1) == sorted(first)
    for name in first:
        np.testing.assert_array_equal(init0[name], first[name], err_msg=name)
        np.testing.assert_array_equal(init1[name], first[name], err_msg=name)
    # ... and end equal after STEPS more steps
    assert int(final0['global_step']) == int(final1['global_step']) == 2 * STEPS
    for name in final0:
        if not is_ema(name):
            np.testing.assert_allclose(final0[name], final1[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert os.path.isfile(str(run['logdir'] / 'model-{}.index'.format(2 * STEPS)))
    for rank in (0, 1):
        assert 'Start Epoch 2' in rank_output(output, rank), output[-8000:]
    assert 'Start Epoch 1 ' not in output
    assert os.listdir(str(run['rank1_logdir'])) == []
