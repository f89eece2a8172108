"""Test setup: the repo root on sys.path and TF_USE_LEGACY_KERAS set (via compat) before TensorFlow."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import compat  # noqa: E402,F401

# Shared by the data and evaluation tests: a generated sample dataset and random checkpoints.
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorpack.tfutils.tower import TowerContext  # noqa: E402

import main  # noqa: E402
from deploy import export  # noqa: E402
from ghostnet import GhostNet  # noqa: E402
from weights.checkpoint import checkpoint_variables  # noqa: E402
from data.samples import write_sample_dataset  # noqa: E402

tfv1 = tf.compat.v1

REFERENCE_DIR = os.path.join(ROOT, '..', 'shared', 'reference')
# Tests that need data from outside the repository, or a GPU, are marked: their skips are named in the
# summary (pytest -rs), and `-m "not external_data"` or `-m gpu` selects them.
needs_reference = pytest.mark.external_data(reason='../shared/reference/ (the released checkpoint index) '
                                                   'beside this checkout')


def pytest_configure(config):
    config.addinivalue_line('markers', 'external_data(reason): needs data from outside the repository')
    config.addinivalue_line('markers', 'gpu: runs fully only where TensorFlow has NCHW kernels (a GPU)')
    if hasattr(config.option, 'loadscopereorder'):     # pytest-xdist: hand out files in the order below
        config.option.loadscopereorder = False


# The modules that take longest (seconds of a 2-core run, --durations=0), handed out first: with
# `-n 2 --dist loadfile` the two workers then finish within seconds of each other (xdist's own order, by
# number of tests, left one worker running test_survival alone for half a minute). Other modules follow.
LONGEST_FIRST = ('test_family.py',            # 210
                 'test_survival.py',          # 184
                 'test_family_training.py',   # 148
                 'test_plugin.py',            # 145
                 'test_train.py',             # 138
                 'test_eval.py',              # 122
                 'test_cifar.py',             # 96
                 'test_export.py',            # 73
                 'test_int8.py',              # 53
                 'test_model.py')             # 42


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def eager_execution():
    """tensorpack's training turns eager execution off for the whole process (a test may train in it):
    every test starts with it on, as a fresh process has it."""
    export.eager_again()


def pytest_runtest_setup(item):
    for marker in item.iter_markers('external_data'):
        if not os.path.isdir(REFERENCE_DIR):
            pytest.skip('external data missing: {}'.format(marker.kwargs['reason']))


def run_main(capfd, *flags):
    """main.main in this process, which must succeed: its stdout."""
    assert main.main(list(flags)) == 0
    out, err = capfd.readouterr()
    assert 'Traceback' not in err
    return out


def main_error(capfd, *flags, lines=1):
    """main.main in this process, which must stop with an `error: ...` exit of `lines` lines (a checkpoint
    that does not fit lists its variables below the first), no result and no traceback: the message."""
    with pytest.raises(SystemExit) as stop:
        main.main(list(flags))
    out, err = capfd.readouterr()
    assert out == '' and 'Traceback' not in err, out + err
    message = str(stop.value.code)
    assert message.startswith('error: ') and (lines is None or message.count('\n') == lines - 1), message
    return message


# Small enough for CPU tests: the model and the images the sample and checkpoint fixtures use.
SMALL_WIDTH = 0.25
SMALL_IMAGE_SIZE = 32
SAMPLE = dict(num_classes=4, train_per_class=1, val_per_class=3, image_size=48, metadata_classes=1000)


def run_main_py(*flags, timeout=300, verbose=True):
    """main.py with `flags` in a subprocess from the repo root: its CompletedProcess (text output).
    `verbose` (--verbose) puts every log line on stderr, as the tests that read them need."""
    return subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *flags, *['--verbose'][:verbose]],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def random_values(variables, seed=0, gamma_range=(0.5, 1.5), variance_range=(0.5, 1.5)):
    """{variable name: random float32 value} by name: batch-norm scales in `gamma_range` and moving variances in
    `variance_range`, He-scaled conv kernels (so that activations keep their size through the depth),
    depthwise kernels of standard deviation 1, and the rest (biases, shifts, means) normal with 0.2."""
    rng = np.random.RandomState(seed)
    values = {}
    for var in sorted(variables, key=lambda v: v.op.name):
        name, shape = var.op.name, var.shape.as_list()
        if name.endswith('variance/EMA'):
            value = rng.uniform(*variance_range, shape)
        elif name.endswith('gamma'):
            value = rng.uniform(*gamma_range, shape)
        elif len(shape) == 4:
            fan_in = 1 if name.endswith('DW') else np.prod(shape[:-1]) / 2
            value = rng.normal(0, np.sqrt(1 / fan_in), shape)
        else:
            value = rng.normal(0, 0.2, shape)
        values[name] = value.astype(np.float32)
    return values


def build_inference_graph(num_classes=1000, width=SMALL_WIDTH, image_size=SMALL_IMAGE_SIZE, **model_args):
    """GhostNet (`model_args`: se, codes) built for inference in the default graph, with placeholders
    `input` and `label`."""
    model = GhostNet(num_classes=num_classes, width=width, image_shape=image_size, **model_args)
    inputs = [tfv1.placeholder(spec.dtype, spec.shape, spec.name) for spec in model.get_input_signature()]
    with TowerContext('', is_training=False):
        model.build_graph(*inputs)
    return model


def write_random_checkpoint(prefix, num_classes=1000, width=SMALL_WIDTH, image_size=SMALL_IMAGE_SIZE,
                            seed=0, drop=(), extra=(), favoured_classes=0, npz=None):
    """Save a randomly initialized model's checkpoint variables under `prefix` (and to `npz`).

    `drop` names variables to leave out, `extra` names scalars to add (like a training checkpoint's
    global step and optimizer slots); `favoured_classes` raises the classifier bias of the first
    classes so that they, and not the other of the 1000, compete for the top ranks.
    """
    with tf.Graph().as_default():
        tfv1.set_random_seed(seed)
        build_inference_graph(num_classes, width, image_size)
        variables = [v for v in checkpoint_variables() if v.op.name not in drop]
        variables += [tfv1.get_variable(name, initializer=0.0) for name in extra]
        with tfv1.Session() as sess:
            sess.run(tfv1.global_variables_initializer())
            if favoured_classes:
                bias, = [v for v in variables if v.op.name == 'MobileNetV2/Logits/Conv2d_1c_1x1/b']
                sess.run(bias[:favoured_classes].assign(bias[:favoured_classes] + 100.0))
            tfv1.train.Saver(variables).save(sess, prefix, write_meta_graph=False)
            if npz:
                np.savez(npz, **sess.run({v.name: v for v in variables}))
    return prefix


@pytest.fixture(scope='session')
def sample_dirs(tmp_path_factory):
    """{'flat': dir, 'subfolders': dir}: the same small sample (1000-class metadata) in both val layouts."""
    root = tmp_path_factory.mktemp('sample')
    return {layout: write_sample_dataset(str(root / layout), val_layout=layout, **SAMPLE)
            for layout in ('flat', 'subfolders')}


@pytest.fixture(scope='session')
def random_checkpoint(tmp_path_factory):
    """A random width-0.25, 1000-class model whose top ranks go to the sample's classes and 4 more.

    {'prefix': TF checkpoint with a training run's extra variables, 'log_dir': its directory
    (with a `checkpoint` file), 'npz': the same weights as a tensorpack .npz}.
    """
    log_dir = tmp_path_factory.mktemp('train_log')
    extra = ('global_step', 'learning_rate', 'MobileNetV2/Conv2d_0/W/Momentum')
    prefix = write_random_checkpoint(str(log_dir / 'model-100'), favoured_classes=2 * SAMPLE['num_classes'],
                                     extra=extra, npz=str(log_dir / 'model.npz'))
    return {'prefix': prefix, 'log_dir': str(log_dir), 'npz': str(log_dir / 'model.npz')}
