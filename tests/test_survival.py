"""Faults injected into real runs on a generated sample: kills, preemption, corrupt checkpoints, dead workers.

Signals go only to processes this test started (main.py, and the data workers it forked), by pid.
"""
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import write_random_checkpoint
from processes import (PATIENCE, children, finish, processes_naming, start, wait_for_line, wait_until_gone,
                       wait_until_not_catching)
from data.samples import write_sample_dataset

import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ['--width_ratio', '0.25', '--image_size', '32', '--batch', '16', '--workers', '2']
NUM_CLASSES = 4
STEPS, EPOCHS = 30, 3


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return write_sample_dataset(str(tmp_path_factory.mktemp('survival_data')), num_classes=NUM_CLASSES,
                                train_per_class=16, val_per_class=4, image_size=48)


@pytest.fixture(scope='module')
def long_val_dir(tmp_path_factory):
    """The sample with 4,000 validation images: evaluating them takes several seconds."""
    return write_sample_dataset(str(tmp_path_factory.mktemp('long_val_data')), num_classes=NUM_CLASSES,
                                train_per_class=16, val_per_class=1000, image_size=48)


def schedule(step, base_lr, warmup_steps, total_steps):
    """The recipe's learning rate, written out: linear warm-up, then half a cosine down to zero."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    return base_lr / 2 * (1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))


def training_flags(data_dir, logdir):
    return ['--data_dir', data_dir, '--logdir', logdir, '--epochs', str(EPOCHS),
            '--steps_per_epoch', str(STEPS), '--lr', '0.4', '--warmup_epochs', '1', *SMALL]


def test_sigkill_leaves_no_data_worker(data_dir, tmp_path):
    logdir, log = str(tmp_path / 'log'), str(tmp_path / 'out.txt')
    proc = start(log, *training_flags(data_dir, logdir))
    wait_for_line(proc, log, r'Start Epoch 1 ')
    workers = children(proc.pid)     # two decode training images, two validation images
    assert len(workers) == 4 and set(workers) <= set(processes_naming(logdir))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(PATIENCE) == -signal.SIGKILL
    assert wait_until_gone(logdir) == []


def test_sigterm_mid_epoch_saves_and_the_rerun_ends_exactly(data_dir, tmp_path):
    logdir, log = str(tmp_path / 'log'), str(tmp_path / 'out.txt')
    flags = training_flags(data_dir, logdir)
    proc = start(log, *flags)
    wait_for_line(proc, log, r'Start Epoch 2 ')
    proc.send_signal(signal.SIGTERM)
    wait_for_line(proc, log, r'Saving a checkpoint at global step \d+ before stopping')
    proc.send_signal(signal.SIGTERM)      # a second one, while it saves, changes nothing
    status, output = finish(proc, log)
    assert 'SIGTERM received while stopping: ignored' in output
    assert status == main.STOPPED, output[-5000:]
    stopped = re.search(r'^Training stopped by SIGTERM at global step (\d+): saved (\S+); run the same '
                        r'command again to resume from it$', output, re.M)
    assert stopped, output[-5000:]
    step, saved = int(stopped.group(1)), stopped.group(2)
    assert STEPS < step < EPOCHS * STEPS and step % STEPS, step
    assert saved == os.path.join(logdir, 'model-{}'.format(step)) == tf.train.latest_checkpoint(logdir)
    base_lr, total = 0.4 * 16 / 256, EPOCHS * STEPS
    checkpoint = tf.train.load_checkpoint(saved)
    assert checkpoint.get_tensor('global_step') == step
    for name in checkpoint.get_variable_to_shape_map():    # every tensor reads back whole
        checkpoint.get_tensor(name)
    assert checkpoint.get_tensor('learning_rate') == pytest.approx(schedule(step, base_lr, STEPS, total))
    assert processes_naming(logdir) == []

    proc = start(log, *flags)
    status, output = finish(proc, log)
    assert status == 0, output[-5000:]
    assert 'Will load checkpoint at {}.'.format(saved) in output
    assert 'Resuming epoch {} after its step {} of {}.'.format(step // STEPS + 1, step % STEPS, STEPS) in output
    first_lr = re.search(r'At global_step=(\d+), learning_rate is set to ([\d.]+)', output)
    assert int(first_lr.group(1)) == step
    assert float(first_lr.group(2)) == pytest.approx(schedule(step, base_lr, STEPS, total), abs=1e-6)
    final = tf.train.load_checkpoint(tf.train.latest_checkpoint(logdir))
    assert final.get_tensor('global_step') == total
    assert 'Training done at global step {}'.format(total) in output


def truncate_data_file(prefix):
    """Cut the checkpoint's data file to half its size; its path."""
    data_file = prefix + '.data-00000-of-00001'
    os.truncate(data_file, os.path.getsize(data_file) // 2)
    return data_file


@pytest.fixture
def truncated_checkpoint(tmp_path):
    """(checkpoint prefix, its data file cut in half) of a random NUM_CLASSES-class small model."""
    prefix = write_random_checkpoint(str(tmp_path / 'ckpt' / 'model'), num_classes=NUM_CLASSES)
    return prefix, truncate_data_file(prefix)


def main_error(capfd, *args):
    """main.main in this process, which must stop with one `error: ...` line: the message."""
    with pytest.raises(SystemExit) as stop:
        main.main(list(args))
    out, err = capfd.readouterr()
    assert 'Traceback' not in out + err
    message = str(stop.value.code)
    assert message.startswith('error: ') and '\n' not in message
    return message


@pytest.mark.parametrize('mode', ['eval', 'predict', 'export', 'train'])
def test_truncated_data_file_is_one_error_line_in_every_mode(capfd, data_dir, tmp_path, truncated_checkpoint,
                                                             mode):
    prefix, data_file = truncated_checkpoint
    image = os.path.join(data_dir, 'val', 'ILSVRC2012_val_00000001.JPEG')
    flags = {'eval': ['--eval', '--data_dir', data_dir],
             'predict': ['--predict', image],
             'export': ['--export', str(tmp_path / 'out')],
             'train': ['--data_dir', data_dir, '--logdir', str(tmp_path / 'log'), '--epochs', '1',
                       '--steps_per_epoch', '1']}[mode]
    message = main_error(capfd, *flags, '--load', prefix, *SMALL)
    assert message.startswith('error: {}: truncated or corrupted'.format(data_file)), message
    assert 'Read less bytes than requested' in message
    assert not os.path.exists(str(tmp_path / 'out' / 'saved_model'))


def test_index_that_is_not_a_checkpoint_is_named(capfd, data_dir, tmp_path):
    prefix = write_random_checkpoint(str(tmp_path / 'model'), num_classes=NUM_CLASSES)
    with open(prefix + '.index', 'wb') as f:
        f.write(b'not a checkpoint index')
    message = main_error(capfd, '--eval', '--data_dir', data_dir, '--load', prefix, *SMALL)
    assert message.startswith('error: {}.index is not a checkpoint index'.format(prefix)), message


def test_corrupt_latest_checkpoint_falls_back_to_the_newest_intact_one(data_dir, tmp_path):
    logdir, log = str(tmp_path / 'log'), str(tmp_path / 'out.txt')
    flags = ['--data_dir', data_dir, '--logdir', logdir, '--steps_per_epoch', '2', *SMALL]
    status, output = finish(start(log, *flags, '--epochs', '2'), log)
    assert status == 0, output[-5000:]
    intact, latest = (os.path.join(logdir, 'model-{}'.format(step)) for step in (2, 4))
    assert tf.train.latest_checkpoint(logdir) == latest
    data_file = truncate_data_file(latest)
    status, output = finish(start(log, *flags, '--epochs', '3'), log)
    assert status == 0, output[-5000:]
    warning = re.search(r'The latest checkpoint (\S+) is unusable \((.*)\); using (\S+), the newest intact one',
                        output)
    assert warning and warning.group(1) == latest and warning.group(3) == intact, output[-5000:]
    assert data_file in warning.group(2)
    assert 'Will load checkpoint at {}.'.format(intact) in output
    assert tf.train.load_checkpoint(tf.train.latest_checkpoint(logdir)).get_tensor('global_step') == 6


@pytest.mark.parametrize('kind', ['data worker', 'validation data worker'])
def test_killed_worker_stops_training_with_an_error_after_saving(data_dir, tmp_path, kind):
    logdir, log = str(tmp_path / 'log'), str(tmp_path / 'out.txt')
    proc = start(log, *training_flags(data_dir, logdir))
    wait_for_line(proc, log, r'Start Epoch 1 ')
    with open(log) as f:
        worker = int(re.search(r'Started 2 {}s: pids (\d+), \d+\.'.format(kind), f.read()).group(1))
    assert worker in children(proc.pid)
    os.kill(worker, signal.SIGKILL)
    status, output = finish(proc, log)
    assert status == 1, output[-5000:]
    error = re.search(r'^error: {} 1 of 2 \(pid {}\) was killed by SIGKILL; training stopped at global step (\d+): '
                      r'saved (\S+); run the same command again to resume from it$'.format(kind, worker), output, re.M)
    assert error and int(error.group(1)) < STEPS, output[-5000:]     # noticed within the first epoch
    assert tf.train.load_checkpoint(error.group(2)).get_tensor('global_step') == int(error.group(1))
    assert 'Traceback' not in output
    assert processes_naming(logdir) == []


def test_replicated_trainer_on_two_cpu_devices(data_dir, tmp_path):
    out = str(tmp_path / 'towers.npz')
    run = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'train_cpu_towers.py'), out,
                          '--data_dir', data_dir, '--logdir', str(tmp_path / 'log'), '--epochs', '1',
                          '--steps_per_epoch', '3', *SMALL], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=PATIENCE)
    assert run.returncode == 0, run.stdout[-5000:]
    assert 'Building graph for training tower 1' in run.stdout
    with np.load(out) as f:
        values = dict(f)
    ran_on = {device: set(values.pop('ran_on/' + device)) for device in ('CPU:0', 'CPU:1')}
    convs = [{op for ops in ran_on.values() for op in ops if op.startswith('tower{}/'.format(tower))
              and op.endswith('/Conv2D')} for tower in range(2)]
    assert len(convs[0]) == len(convs[1]) > 20
    for tower_convs, device in zip(convs, ran_on):   # each tower on its device, with a share of the all-reduce
        assert tower_convs <= ran_on[device], device
        assert any(op.startswith('AllReduceNaive/') for op in ran_on[device]), device
    tower1 = [name[len('tower1/'):] for name in values if name.startswith('tower1/')]
    weights = [name for name in tower1 if name.endswith('/W') or name.endswith('/W/Momentum')]
    assert len(weights) > 100
    for name in weights:      # each tower saw its own half batch; the averaged gradients keep them equal
        np.testing.assert_array_equal(values[name], values['tower1/' + name], err_msg=name)
    moved = [name for name in weights if not np.array_equal(values[name], values['initial/' + name])]
    assert len(moved) > len(weights) // 2
    # batch norm: each tower has its own statistics; tower 0's followed its own half of the batches
    stem = 'MobileNetV2/Conv2d_0/bn/mean/EMA'
    assert stem in tower1
    assert not np.allclose(values[stem], values['initial/' + stem])


def test_validation_lists_the_images_it_could_not_decode(data_dir, tmp_path):
    data = str(tmp_path / 'data')
    shutil.copytree(data_dir, data)
    bad = os.path.join(data, 'val', 'ILSVRC2012_val_00000003.JPEG')
    with open(bad, 'wb') as f:
        f.write(b'not a JPEG')
    log = str(tmp_path / 'out.txt')
    status, output = finish(start(log, '--data_dir', data, '--logdir', str(tmp_path / 'log'), '--epochs', '2',
                                  '--steps_per_epoch', '1', *SMALL), log)
    assert status == 0, output[-5000:]
    assert output.count('Validation skipped 1 images that could not be decoded: {}'.format(bad)) == 2


def test_sigterm_during_validation_gives_it_up_saves_and_stops(long_val_dir, tmp_path):
    logdir, log = str(tmp_path / 'log'), str(tmp_path / 'out.txt')
    proc = start(log, '--data_dir', long_val_dir, '--logdir', logdir, '--epochs', '2', '--steps_per_epoch', '2',
                 *SMALL)
    wait_for_line(proc, log, r'Validation:')
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    status, output = finish(proc, log)
    assert time.monotonic() - signalled < 60
    assert status == main.STOPPED, output[-5000:]
    given_up = re.search(r'Validation given up after (\d+) of 250 batches: training is stopping', output)
    assert given_up and int(given_up.group(1)) < 250, output[-5000:]
    assert 'val-error-top1' not in output     # no statistic from the part that ran
    assert re.search(r'^Training stopped by SIGTERM at global step 3: saved {}; '.format(
        re.escape(os.path.join(logdir, 'model-3'))), output, re.M), output[-5000:]
    assert processes_naming(logdir) == []


def test_evaluation_worker_killed_by_sigsegv_is_one_error_line(long_val_dir, tmp_path):
    log = str(tmp_path / 'out.txt')
    proc = start(log, '--eval', '--data_dir', long_val_dir, *SMALL)
    wait_for_line(proc, log, r'Evaluating ghostnet on 4000 images')
    deadline = time.monotonic() + PATIENCE
    while len(children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = children(proc.pid)[0]
    wait_until_not_catching(worker, signal.SIGSEGV)    # past the fork: TensorFlow's crash handler reset
    os.kill(worker, signal.SIGSEGV)       # as a decoder crashing on a malicious file would end
    status, output = finish(proc, log)
    assert status == 1, output[-5000:]
    error = r'^error: evaluation stopped: validation data worker \d of 2 \(pid {}\) was killed by SIGSEGV$'
    assert re.search(error.format(worker), output, re.M), output[-5000:]
    assert 'Traceback' not in output and 'Top1 Error' not in output
    assert wait_until_gone(long_val_dir) == []
