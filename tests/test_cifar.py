"""CIFAR-10: the python batch files read safely, Ghost-ResNet-56 trained, evaluated, exported; bad input."""
import os
import pickle
import re
import shutil
import tracemalloc

import cv2
import numpy as np
import pytest
import tensorflow as tf

from data import cifar
import main
from conftest import main_error, run_main_py
from data.samples import write_cifar_sample
from imagenet_utils import DataError

CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS, PER_FILE = 10, 60, 20, 250   # files of 250, 250, 100 images
TRAIN = ['--arch', 'ghost-resnet56', '--batch', '16', '--lr', '0.8', '--warmup_epochs', '0.5', '--lr_decay_at', '3/4',
         '--val_every', '4', '--epochs', '4']


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return write_cifar_sample(str(tmp_path_factory.mktemp('cifar')), CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS,
                              PER_FILE)


@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
    """A Ghost-ResNet-56 trained briefly on the sample: its log directory."""
    logdir = str(tmp_path_factory.mktemp('log'))
    run = run_main_py('--data_dir', data_dir, '--logdir', logdir, *TRAIN, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert '--lr_schedule=step' in run.stderr and '--ratio=2' in run.stderr     # the recipe is logged
    return logdir


def test_sample_is_in_the_official_format(data_dir):
    folder = os.path.join(data_dir, 'cifar-10-batches-py')
    assert sorted(os.listdir(folder)) == ['batches.meta', 'data_batch_1', 'data_batch_2', 'data_batch_3',
                                          'test_batch']
    with open(os.path.join(folder, 'data_batch_3'), 'rb') as f:
        raw = f.read()
    # as Python 2 wrote the official files: protocol 2, Python 2 strings, numpy.core's _reconstruct
    assert raw.startswith(b'\x80\x02}(U\x0bbatch_label') and b'cnumpy.core.multiarray\n_reconstruct\n' in raw
    batch = pickle.loads(raw, encoding='bytes')
    assert batch[b'data'].shape == (100, 3072) and batch[b'data'].dtype == np.uint8 and len(batch[b'labels']) == 100
    images, labels, names = cifar.read_split(folder, 'train')    # the folder itself works too
    assert images.shape == (600, 32, 32, 3) and names == ['class{}'.format(i) for i in range(CLASSES)]
    # BGR, from the red, green and blue planes of each row
    np.testing.assert_array_equal(images[-1, 3, 5], batch[b'data'][-1, [2 * 1024 + 101, 1024 + 101, 101]])
    assert labels[-1] == batch[b'labels'][-1]


def test_training_learns_and_eval_reports_the_exported_models_error(data_dir, trained, tmp_path, capfd):
    assert main.main(['--arch', 'ghost-resnet56', '--eval', '--data_dir', data_dir, '--load', trained]) == 0
    out = capfd.readouterr().out
    assert re.search(r'Evaluated 200 images in [\d.]+ s[:( ][^\n]*first run\)\nTop1 Error: [\d.]+\nTop5 Error: [\d.]+\n$',
                     out)
    top1 = float(re.search(r'Top1 Error: ([\d.]+)', out).group(1))
    assert top1 < 0.5, out     # chance is 0.9

    assert main.main(['--arch', 'ghost-resnet56', '--load', trained, '--export', str(tmp_path), '--tflite']) == 0
    images, labels, _ = cifar.read_split(data_dir, 'test')
    served = tf.saved_model.load(str(tmp_path / 'saved_model')).signatures['serving_default'](
        images=tf.constant(images[..., ::-1]))
    assert served['probabilities'].shape == (200, CLASSES)
    assert np.mean(served['top5'].numpy()[:, 0] != labels) == pytest.approx(top1, abs=1 / 200)
    assert os.path.getsize(tmp_path / 'ghost-resnet56.tflite') > 0


def test_predict_names_the_classes_from_batches_meta(data_dir, trained, tmp_path, capfd):
    images, _, _ = cifar.read_split(data_dir, 'test')
    path = str(tmp_path / 'test0.png')
    cv2.imwrite(path, images[0])
    assert main.main(['--arch', 'ghost-resnet56', '--predict', path, '--data_dir', data_dir, '--load', trained]) == 0
    lines = capfd.readouterr().out.splitlines()
    assert lines[0] == path and len(lines) == 6 and all(re.match(r'  [\d.]+  class\d$', line) for line in lines[1:])


def test_fine_tuning_to_another_class_count_skips_only_the_classifier(trained, tmp_path):
    five = write_cifar_sample(str(tmp_path / 'five'), 5, 8, 4, 40)
    run = run_main_py('--data_dir', five, '--logdir', str(tmp_path / 'log'), '--load', trained, *TRAIN[:-4],
                      '--epochs', '1', '--steps_per_epoch', '2')
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    skipped = re.search('not restoring (.*)', run.stderr).group(1)
    assert skipped.count('ResNet56/Logits/fc/') == 2 and 'checkpoint [1, 1, 64, 10], model [1, 1, 64, 5]' in skipped


def write_batch(path, content, protocol=2):
    with open(path, 'wb') as f:
        pickle.dump(content, f, protocol=protocol)


@pytest.fixture
def broken(data_dir, tmp_path):
    """A copy of the sample's folder to break: its path."""
    folder = str(tmp_path / 'cifar-10-batches-py')
    shutil.copytree(os.path.join(data_dir, 'cifar-10-batches-py'), folder)
    return folder


def test_missing_folder_is_an_error_and_nothing_is_downloaded(tmp_path, capfd):
    message = main_error(capfd, '--arch', 'resnet56', '--eval', '--data_dir', str(tmp_path / 'none'))
    assert 'none' in message and 'cifar-10-batches-py' in message and 'nothing is downloaded' in message
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('damage, expected', [
    ('text', 'test_batch: not a CIFAR python batch file'),
    ('lengths', 'test_batch: 200 images in `data` but 199 `labels`'),
    ('label', 'test_batch: label 10 (image 3) is out of range for the 10 classes of batches.meta'),
    ('shape', 'test_batch: `data` must be a uint8 array [N, 3072], got uint8 [200, 1024]'),
    ('huge label', 'test_batch: `labels` must be a list of integers, got list'),
    ('float labels', 'test_batch: `labels` must be a list of integers, got float64 [200]'),
    ('scalar labels', 'test_batch: `labels` must be a list of integers, got int64 []'),
])
def test_bad_batch_file_is_named(broken, capfd, damage, expected):
    path = os.path.join(broken, 'test_batch')
    with open(path, 'rb') as f:
        batch = pickle.load(f, encoding='bytes')
    if damage == 'text':
        with open(path, 'w') as f:
            f.write('not a pickle')
    elif damage == 'lengths':
        write_batch(path, {**batch, b'labels': batch[b'labels'][:-1]})
    elif damage == 'label':
        write_batch(path, {**batch, b'labels': batch[b'labels'][:3] + [10] + batch[b'labels'][4:]})
    elif damage == 'huge label':
        write_batch(path, {**batch, b'labels': batch[b'labels'][:3] + [2 ** 70] + batch[b'labels'][4:]})
    elif damage == 'float labels':
        write_batch(path, {**batch, b'labels': np.asarray(batch[b'labels'], np.float64) + 0.5})
    elif damage == 'scalar labels':
        write_batch(path, {**batch, b'labels': np.array(3, np.int64)})
    else:
        write_batch(path, {**batch, b'data': batch[b'data'][:, :1024]})
    message = main_error(capfd, '--arch', 'resnet56', '--eval', '--data_dir', broken)
    assert expected in message and broken in message


def test_labels_of_shared_references_are_refused_before_any_array_is_built(tmp_path):
    path = str(tmp_path / 'data_batch_1')
    row = [0] * 2000
    write_batch(path, {b'data': np.zeros((1, 3072), np.uint8), b'labels': [row] * 2000})   # 4M labels in 20 kB
    assert os.path.getsize(path) < 30000
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match='data_batch_1: `labels` must be a list of integers, got list'):
            cifar.read_batch(path, CLASSES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 ** 20     # building the 2000 x 2000 array would take 32 MB


def test_bad_input_exits_with_status_1_and_one_error_line(tmp_path):
    proc = run_main_py('--arch', 'resnet56', '--eval', '--data_dir', str(tmp_path / 'none'))
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert proc.stderr.rstrip('\n').splitlines()[-1].startswith('error: --data_dir {}: no '.format(tmp_path / 'none'))


def test_batch_larger_than_the_training_set_is_an_error(data_dir, tmp_path, capfd):
    message = main_error(capfd, '--arch', 'resnet56', '--data_dir', data_dir, '--batch', '100000',
                       '--logdir', str(tmp_path / 'log'))
    assert '--batch 100000: 100000 images per tower and step' in message and 'training images' in message


class RunsCode:
    """Unpickling this calls os.system: what a crafted batch file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, ('touch ' + self.marker,)


def test_crafted_batch_file_is_refused_and_runs_nothing(broken, tmp_path, capfd):
    marker = str(tmp_path / 'code_ran')
    write_batch(os.path.join(broken, 'data_batch_1'), {b'data': RunsCode(marker), b'labels': []})
    with open(os.path.join(broken, 'data_batch_1'), 'rb') as f:
        assert b'system' in f.read()
    message = main_error(capfd, '--arch', 'ghost-vgg16', '--data_dir', broken, '--epochs', '1')
    assert 'data_batch_1: not a CIFAR python batch file' in message and 'system' in message
    assert not os.path.exists(marker)
