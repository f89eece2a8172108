"""Faults injected into real runs on a generated sample: kills, preemption, corrupt checkpoints, dead workers.

Signals go only to processes this test started (main.py, and the data workers it forked), by pid.
"""
import contextlib
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, build_inference_graph, main_error, write_random_checkpoint
from processes import (PATIENCE, children, finish, processes_naming, start, wait_for_line, wait_until_gone,
                       wait_until_not_catching)
from data.samples import write_sample_dataset
from imagenet_utils import DataError
from runtime.preemption import STOP_SIGNALS, StopRequest, signals_request_stop
from weights.checkpoint import CheckpointError
from weights.resume import RESUME_HINT, ResumeInit

import main

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
    proc.send_signal(signal.SIGTERM)      # a second one, while it saves or ends, changes nothing
    status, output = finish(proc, log)
    # it is logged as ignored when it comes before the process's last report (the save of this small model may
    # be over before the signal comes); test_signal_handler_only_records_and_the_loop_logs checks the line
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


@pytest.fixture(scope='module')
def small_run(tmp_path_factory):
    """(log directory, checkpoint prefix) holding a random checkpoint of the small model, NUM_CLASSES classes."""
    logdir = str(tmp_path_factory.mktemp('small_run'))
    return logdir, write_random_checkpoint(os.path.join(logdir, 'model-3'), num_classes=NUM_CLASSES)


@pytest.mark.parametrize('model_args, checkpoint_has, built', [    # --width_ratio: main end to end below
    (dict(se=False), '--se 1', '--se 0'),
    (dict(dw_code=[3] * 15 + [5]), '--dw_code_str ' + ','.join(['3'] * 16), '--dw_code_str ' + '3,' * 15 + '5'),
    (dict(ratio_code=[1] + [2] * 15), '--ratio_code_str ' + ','.join(['2'] * 16),
     '--ratio_code_str 1' + ',2' * 15),
])
def test_resuming_with_other_flags_names_the_flag_and_the_checkpoints_value(small_run, model_args, checkpoint_has,
                                                                            built):
    logdir, prefix = small_run
    with tf.Graph().as_default():
        model = build_inference_graph(NUM_CLASSES, **model_args)
        with pytest.raises(CheckpointError) as error:
            ResumeInit(prefix, logdir, model)._setup_graph()
    assert str(error.value) == '{} holds a checkpoint of {} ({}), but these flags build {}: {}'.format(
        logdir, checkpoint_has, prefix, built, RESUME_HINT)


def test_resuming_with_data_of_other_classes_names_both_counts(small_run):
    logdir, prefix = small_run
    with tf.Graph().as_default():
        model = build_inference_graph(NUM_CLASSES + 1)
        with pytest.raises(CheckpointError) as error:
            ResumeInit(prefix, logdir, model)._setup_graph()
    assert str(error.value) == '{} holds a checkpoint of 4 classes ({}), but the data has 5: {}'.format(
        logdir, prefix, RESUME_HINT)


def test_resuming_with_another_width_is_one_error_line(capfd, data_dir, small_run):
    logdir, prefix = small_run
    flags = [*SMALL[2:], '--width_ratio', '0.5', '--data_dir', data_dir, '--logdir', logdir, '--epochs', '1']
    message = main_error(capfd, *flags)
    assert message == 'error: {} holds a checkpoint of --width_ratio 0.25 ({}), but these flags build ' \
                      '--width_ratio 0.5: {}'.format(logdir, prefix, RESUME_HINT)


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


@contextlib.contextmanager
def tensorpack_log():
    """The messages tensorpack's logger logs within the block, as a list that grows."""
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    tensorpack_logger = logging.getLogger('tensorpack')
    tensorpack_logger.addHandler(handler)
    try:
        yield messages
    finally:
        tensorpack_logger.removeHandler(handler)


@pytest.fixture
def stop_signal_handlers_kept():
    """SIGTERM's and SIGINT's handlers as they were before the test, restored after it."""
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def test_signal_handler_only_records_and_the_loop_logs(stop_signal_handlers_kept):
    request = StopRequest()
    with tensorpack_log() as messages, signals_request_stop(request):
        signal.raise_signal(signal.SIGTERM)     # its handler has run when this returns
        assert request.reason == 'stopped by SIGTERM' and messages == []
        assert request.requested()              # as the training loop asks
        assert messages == ['SIGTERM received: saving a checkpoint at the step reached, then stopping']
        signal.raise_signal(signal.SIGINT)
        assert len(messages) == 1 and request.reason == 'stopped by SIGTERM'
        assert request.requested() and request.requested()
    assert messages[1:] == ['SIGINT received while stopping: ignored (the checkpoint is saved or being saved); '
                            'another SIGTERM or SIGINT ends the process at once']
    assert [signal.getsignal(signum) for signum in STOP_SIGNALS] == [signal.SIG_DFL] * 2


def test_a_third_stop_signal_ends_the_process():
    child = os.fork()
    if child == 0:     # the child only raises signals, then leaves at once, whatever happens
        try:
            with signals_request_stop(StopRequest()):
                for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGINT):
                    signal.raise_signal(signum)
        finally:
            os._exit(0)
    status = wait_status(child)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGINT, status


def wait_status(child, patience=60):
    """The wait status of a forked `child` once it ends; it is killed after `patience` seconds."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            return status
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    return os.waitpid(child, 0)[1]


def stopping_ranks(*reasons):
    """StopRequests of a rank without a reason and ranks with `reasons` ('signal' or 'failure'), after the
    SaveAndStop all-reduce (a sum of their rank counts) told them all."""
    ranks = [StopRequest() for _ in range(len(reasons) + 1)]
    for rank, reason in zip(ranks[1:], reasons):
        if reason == 'signal':
            rank.on_signal(signal.SIGTERM, None)
        else:
            rank.fail('data worker 1 of 2 (pid 7) was killed by SIGKILL')
    summed = np.sum([rank.rank_counts() for rank in ranks], axis=0)
    assert all(rank.follow_ranks(summed) for rank in ranks)
    return ranks


@pytest.mark.parametrize('reasons', [['failure'], ['signal', 'failure'], ['failure', 'signal']])
def test_a_dead_data_worker_on_another_rank_is_reported_as_one(reasons):
    ranks = stopping_ranks(*reasons)
    ranks[0].saved = 'log/model-12'
    with pytest.raises(DataError) as stop:
        main.raise_stopped(ranks[0], 12, is_chief=True)
    assert str(stop.value) == ("a data worker of another rank failed (that rank's log names it); training stopped "
                               "at global step 12: saved log/model-12; run the same command again to resume from it")
    failed = ranks[1 + reasons.index('failure')]
    with pytest.raises(DataError, match=r'^data worker 1 of 2 \(pid 7\) was killed by SIGKILL; training stopped at '
                                        r'global step 12: rank 0 saved the checkpoint$'):
        main.raise_stopped(failed, 12, is_chief=False)


def test_a_signal_to_another_rank_is_reported_as_its_stop_request():
    ranks = stopping_ranks('signal')
    with pytest.raises(main.TrainingStopped, match="^Training stopped by another rank's stop request at global "
                                                   "step 5: rank 0 saved the checkpoint$"):
        main.raise_stopped(ranks[0], 5, is_chief=False)


def test_ranks_without_a_reason_go_on():
    ranks = [StopRequest(), StopRequest()]
    summed = np.sum([rank.rank_counts() for rank in ranks], axis=0)
    assert not any(rank.follow_ranks(summed) for rank in ranks)
    assert not any(rank.reason for rank in ranks)
