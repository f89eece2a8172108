"""Training through the CLI on a generated dataset: learning, resume, fine-tuning, bad input."""
import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import main_error, run_main_py, write_random_checkpoint
from data.samples import write_sample_dataset

SMALL = ['--width_ratio', '0.25', '--image_size', '32', '--batch', '16', '--workers', '2']
STEPS_PER_EPOCH = 8     # 4 classes x 32 images / batch 16


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return write_sample_dataset(str(tmp_path_factory.mktemp('train_data')), num_classes=4,
                                train_per_class=32, val_per_class=8, image_size=48)


ONE_EPOCH = ['--lr', '0.4', '--warmup_epochs', '0.5', *SMALL]


def train(*flags, timeout=300):
    """`main.py` with `flags`; (exit status, stdout + stderr)."""
    run = run_main_py(*flags, timeout=timeout)
    return run.returncode, run.stdout + run.stderr


@pytest.fixture(scope='module')
def one_epoch(data_dir, tmp_path_factory):
    """The log directory of a finished 1-epoch run with ONE_EPOCH; tests continue copies of it."""
    logdir = str(tmp_path_factory.mktemp('one_epoch') / 'log')
    status, output = train('--data_dir', data_dir, '--logdir', logdir, '--epochs', '1', *ONE_EPOCH)
    assert status == 0, output
    return logdir


def copy_of(logdir, tmp_path):
    """A copy of a log directory (its checkpoint file holds relative paths) under tmp_path."""
    copy = str(tmp_path / 'log')
    shutil.copytree(logdir, copy)
    return copy


def stats(logdir):
    with open(os.path.join(logdir, 'stats.json')) as f:
        return json.load(f)


def test_short_training_learns_past_corrupt_images(data_dir, tmp_path):
    data = str(tmp_path / 'data')
    shutil.copytree(data_dir, data)
    bad, bad_val = (os.path.join(data, 'train', 'n00000002', 'n00000002_5.JPEG'),
                    os.path.join(data, 'val', 'ILSVRC2012_val_00000003.JPEG'))
    for path in (bad, bad_val):
        with open(path, 'wb') as f:
            f.write(b'not a JPEG')
    logdir = str(tmp_path / 'log')
    status, output = train('--data_dir', data, '--logdir', logdir, '--epochs', '8', '--lr', '0.4',
                           '--warmup_epochs', '1', *SMALL)
    assert status == 0, output
    history = stats(logdir)
    assert [epoch['global_step'] for epoch in history] == [STEPS_PER_EPOCH * (i + 1) for i in range(8)]
    assert all({'cost', 'train-error-top1', 'learning_rate'} <= set(epoch) for epoch in history)   # the summaries
    assert min(epoch['val-error-top1'] for epoch in history) < 0.35     # chance is 0.75
    assert history[-1]['val-error-top1'] < 0.5
    assert os.path.exists(os.path.join(logdir, 'min-val-error-top1.index'))
    assert 'Training done at global step 64' in output
    assert 'Skipped a training image that could not be decoded: {}'.format(bad) in output
    assert sum(epoch['bad_images'] for epoch in history) >= 1
    assert output.count('Validation skipped 1 images that could not be decoded: {}'.format(bad_val)) == 8
    # validation is fed as --eval is: by --workers data workers of its own, timed per epoch
    assert 'Started 2 validation data workers' in output
    assert all(epoch['validation_seconds'] > 0 for epoch in history)


def schedule(step, base_lr, warmup_steps, total_steps):
    """The recipe's learning rate, written out: linear warm-up, then half a cosine down to zero."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    return base_lr / 2 * (1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))


def add_corrupt_checkpoint(logdir, step):
    """A copy of the latest checkpoint saved as that of `step`, listed as the latest, its data cut in half."""
    latest = tf.train.latest_checkpoint(logdir)
    corrupt = os.path.join(logdir, 'model-{}'.format(step))
    for suffix in ('.index', '.data-00000-of-00001'):
        shutil.copyfile(latest + suffix, corrupt + suffix)
    os.truncate(corrupt + '.data-00000-of-00001', os.path.getsize(corrupt + '.data-00000-of-00001') // 2)
    tf.compat.v1.train.update_checkpoint_state(logdir, corrupt, [latest, corrupt])
    return corrupt


def test_resume_passes_over_a_corrupt_checkpoint_and_continues_the_schedule(data_dir, one_epoch, tmp_path):
    """The latest checkpoint (a copy of the epoch's, its data cut in half) is unusable: the run resumes from the
    newest intact one, at its place in the schedule."""
    logdir = copy_of(one_epoch, tmp_path)
    intact = os.path.join(logdir, 'model-{}'.format(STEPS_PER_EPOCH))
    corrupt = add_corrupt_checkpoint(logdir, STEPS_PER_EPOCH + 1)
    status, output = train('--data_dir', data_dir, '--logdir', logdir, '--epochs', '2', *ONE_EPOCH)
    assert status == 0, output
    warning = re.search(r'The latest checkpoint (\S+) is unusable \((.*)\); using (\S+), the newest intact one',
                        output)
    assert warning and warning.group(1) == corrupt and warning.group(3) == intact, output[-5000:]
    assert corrupt + '.data-00000-of-00001' in warning.group(2)
    assert 'Will load checkpoint at {}.'.format(intact) in output
    first_lr = re.search(r'At global_step=(\d+), learning_rate is set to ([\d.]+)', output)
    assert int(first_lr.group(1)) == STEPS_PER_EPOCH
    base_lr = 0.4 * 16 / 256
    assert float(first_lr.group(2)) == pytest.approx(
        schedule(STEPS_PER_EPOCH, base_lr, STEPS_PER_EPOCH // 2, 2 * STEPS_PER_EPOCH), abs=1e-6)
    assert [epoch['global_step'] for epoch in stats(logdir)] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    saved = tf.train.load_checkpoint(tf.train.latest_checkpoint(logdir))
    assert saved.get_tensor('global_step') == 2 * STEPS_PER_EPOCH
    assert saved.has_tensor('MobileNetV2/Conv2d_0/W/Momentum')


def test_restart_keeps_the_old_run_and_fake_data_trains_without_a_dataset(one_epoch, tmp_path):
    logdir = copy_of(one_epoch, tmp_path)
    status, output = train('--fake', '--logdir', logdir, '--epochs', '1', '--steps_per_epoch', '2', '--restart',
                           *SMALL)
    assert status == 0, output
    assert [epoch['global_step'] for epoch in stats(logdir)] == [2]
    kept = [name for name in os.listdir(str(tmp_path)) if name.startswith('log') and name != 'log']
    assert len(kept) == 1 and os.path.exists(str(tmp_path / kept[0] / 'model-{}.index'.format(STEPS_PER_EPOCH)))


def test_fine_tuning_restores_all_but_the_classifier(tmp_path):
    data = write_sample_dataset(str(tmp_path / 'data'), num_classes=5, train_per_class=4,
                                val_per_class=2, image_size=40)
    training_state = ('global_step', 'learning_rate', 'MobileNetV2/Logits/Conv2d_1c_1x1/W/Momentum')
    source = write_random_checkpoint(str(tmp_path / 'imagenet' / 'model'), num_classes=1000,
                                     extra=training_state)     # as a training checkpoint has
    logdir = str(tmp_path / 'log')
    status, output = train('--data_dir', data, '--logdir', logdir, '--load', source, '--lr', '0',
                           '--epochs', '1', '--steps_per_epoch', '2', *SMALL)
    assert status == 0, output
    skipped = re.search('not restoring (.*)', output).group(1)
    assert 'MobileNetV2/Logits/Conv2d_1c_1x1/W (checkpoint [1, 1, 1280, 1000], model [1, 1, 1280, 5])' in skipped
    assert skipped.count('checkpoint [') == 2
    before = tf.train.load_checkpoint(source)
    after = tf.train.load_checkpoint(tf.train.latest_checkpoint(logdir))
    assert after.get_variable_to_shape_map()['MobileNetV2/Logits/Conv2d_1c_1x1/W'] == [1, 1, 1280, 5]
    assert after.get_tensor('global_step') == 2         # the source's step was not restored
    kept = [name for name in before.get_variable_to_shape_map() if name not in training_state
            and not name.startswith('MobileNetV2/Logits/') and not name.endswith('/EMA')]
    assert len(kept) == 271        # 435 released variables less 81 x 2 batch-norm EMAs and the classifier
    for name in kept:           # learning rate 0: what was restored is still there
        np.testing.assert_array_equal(after.get_tensor(name), before.get_tensor(name), err_msg=name)


def test_fine_tuning_from_another_width_is_an_error(capfd, data_dir, tmp_path):
    source = write_random_checkpoint(str(tmp_path / 'w05' / 'model'), num_classes=1000, width=0.5)
    message = main_error(capfd, '--data_dir', data_dir, '--logdir', str(tmp_path / 'log'), '--load', source,
                         '--epochs', '1', '--steps_per_epoch', '1', *SMALL, lines=None)
    assert message.startswith('error: checkpoint {} does not fit the model'.format(source)), message
    assert re.search(r'\n    MobileNetV2/\S+: checkpoint \[[\d, ]+\], model \[[\d, ]+\]\n', message), message


def test_nan_loss_stops_and_names_the_newest_intact_checkpoint(data_dir, one_epoch, tmp_path):
    logdir = copy_of(one_epoch, tmp_path)
    intact = os.path.join(logdir, 'model-{}'.format(STEPS_PER_EPOCH))
    corrupt = add_corrupt_checkpoint(logdir, STEPS_PER_EPOCH + 1)
    status, output = train('--data_dir', data_dir, '--logdir', logdir, '--epochs', '2', '--lr', '1e12', *SMALL)
    assert status == 1
    error, = [line for line in output.splitlines() if line.startswith('error: the loss became NaN or infinite')]
    assert error.endswith('The last good checkpoint is {}'.format(intact)), error
    assert tf.train.latest_checkpoint(logdir) == corrupt     # nothing saved after the NaN


@pytest.mark.parametrize('remove, expected', [
    ('train', 'train not found'), ('caffe_ilsvrc12/train.txt', 'train.txt')])
def test_missing_training_data_is_a_clear_error(capfd, data_dir, tmp_path, remove, expected):
    data = str(tmp_path / 'data')
    shutil.copytree(data_dir, data)
    target = os.path.join(data, remove)
    shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    assert expected in main_error(capfd, '--data_dir', data, '--logdir', str(tmp_path / 'log'), *SMALL)
    assert not os.path.exists(str(tmp_path / 'log' / 'checkpoint'))
