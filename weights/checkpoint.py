"""Checkpoints: where `--load` points, whether a checkpoint fits the model, and restoring it."""
import glob
import os
import re
import zipfile

import compat  # noqa: F401  (must come before TensorFlow)
import numpy as np
import tensorflow as tf
from tensorpack.tfutils.sessinit import SessionInit
from tensorpack.tfutils.varmanip import SessionUpdate, load_checkpoint_vars
from tensorpack.utils import logger

tfv1 = tf.compat.v1


class CheckpointError(Exception):
    """A checkpoint that is absent or does not fit the model; the message says which variables."""


def checkpoint_variables(graph=None):
    """The variables a checkpoint must provide: trainable ones and batch-norm `mean/EMA`, `variance/EMA`.

    Bookkeeping variables such as `global_step`, `learning_rate` and optimizer slots are not among them.
    """
    graph = graph or tfv1.get_default_graph()
    trainable = set(graph.get_collection(tfv1.GraphKeys.TRAINABLE_VARIABLES))
    return sorted((v for v in graph.get_collection(tfv1.GraphKeys.GLOBAL_VARIABLES)
                   if v in trainable or re.search('/(mean|variance)/EMA$', v.op.name)),
                  key=lambda v: v.op.name)


def resolve_checkpoint(path):
    """A `--load` value (checkpoint prefix, training log directory, or .npz) as a loadable path."""
    if path.endswith('.npz'):
        if not os.path.isfile(path):
            raise CheckpointError('{} does not exist'.format(path))
        return path
    if os.path.isdir(path):
        return latest_intact_checkpoint(path)
    prefix = re.sub(r'\.(index|data-\d+-of-\d+)$', '', path)
    if not os.path.isfile(prefix + '.index'):
        raise CheckpointError('{}.index does not exist: --load takes a checkpoint prefix (the released '
                              'one: python models/download.py, then --load=./models/ghostnet_checkpoint), '
                              'a training log directory or a .npz file'.format(prefix))
    if not glob.glob(glob.escape(prefix) + '.data-*'):
        raise CheckpointError('{}.index has no {}.data-* file beside it: get both files (python '
                              'models/download.py for the released checkpoint)'.format(prefix, prefix))
    verify_checkpoint(prefix)
    return prefix


def verify_checkpoint(prefix):
    """CheckpointError naming the file at fault unless every tensor of a TF checkpoint reads back intact.

    Reading checks each tensor's size and CRC32C, so a data file cut short or altered is found here
    rather than deep inside a restore.
    """
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (ValueError, tf.errors.OpError) as e:
        raise CheckpointError('{}.index is not a checkpoint index ({}): copy it again'.format(
            prefix, getattr(e, 'message', e))) from None
    for name in sorted(reader.get_variable_to_shape_map()):
        try:
            reader.get_tensor(name)
        except (IndexError, ValueError, tf.errors.OpError) as e:
            data_files = ', '.join(sorted(glob.glob(glob.escape(prefix) + '.data-*')))
            raise CheckpointError('{}: truncated or corrupted, reading {} failed ({}): copy it again'.format(
                data_files, name, getattr(e, 'message', e))) from None


def saved_checkpoints(log_dir):
    """The checkpoints the `checkpoint` file of a training log directory lists, newest first."""
    state = tf.train.get_checkpoint_state(log_dir)
    if state is None:
        return []
    return list(reversed(state.all_model_checkpoint_paths or [state.model_checkpoint_path]))


def latest_intact_checkpoint(log_dir):
    """The newest checkpoint of a training log directory that reads back intact; a warning names any skipped."""
    candidates = saved_checkpoints(log_dir)
    if not candidates:
        raise CheckpointError('{} is a directory without a checkpoint (no "checkpoint" file '
                              'naming an existing model-*.index)'.format(log_dir))
    faults = []
    for prefix in candidates:
        try:
            resolve_checkpoint(prefix)
        except CheckpointError as e:
            faults.append(str(e))
            continue
        if faults:
            logger.warn('The latest checkpoint {} is unusable ({}); using {}, the newest intact one'.format(
                candidates[0], '; '.join(faults), prefix))
        return prefix
    raise CheckpointError('{}: no intact checkpoint: {}'.format(log_dir, '; '.join(faults)))


def checkpoint_shapes(path):
    """{variable name: shape} stored in a TF checkpoint (prefix) or a tensorpack .npz."""
    try:
        if path.endswith('.npz'):
            with np.load(path) as arrays:
                return {re.sub(':0$', '', name): list(arrays[name].shape) for name in arrays.files}
        return tf.train.load_checkpoint(path).get_variable_to_shape_map()
    except (OSError, ValueError, zipfile.BadZipFile, tf.errors.OpError) as e:
        raise CheckpointError('{}: not a readable checkpoint: {}'.format(path, e)) from None


def check_checkpoint(path, model_variables):
    """(missing names, [(name, checkpoint shape, model shape)]) of `model_variables` in a checkpoint."""
    stored = checkpoint_shapes(path)
    missing, mismatched = [], []
    for variable in model_variables:
        name, shape = variable.op.name, variable.shape.as_list()
        if name not in stored:
            missing.append(name)
        elif list(stored[name]) != shape:
            mismatched.append((name, list(stored[name]), shape))
    return missing, mismatched


def checkpoint_mismatch_message(path, missing, mismatched, num_shown=10):
    """The error text for `check_checkpoint` results: what is missing and what has another shape."""
    lines = ['checkpoint {} does not fit the model (its width, SE, codes or number of classes '
             'differ):'.format(path)]
    if missing:
        lines.append('  missing from the checkpoint ({}): {}'.format(
            len(missing), ', '.join(missing[:num_shown])))
    if mismatched:
        lines.append('  with another shape ({}):'.format(len(mismatched)))
        lines += ['    {}: checkpoint {}, model {}'.format(*m) for m in mismatched[:num_shown]]
    if max(len(missing), len(mismatched)) > num_shown:
        lines.append('  (first {} of each shown)'.format(num_shown))
    return '\n'.join(lines)


class CheckedInit(SessionInit):
    """Restores the model's weights from a checkpoint that holds every one of them, shapes equal.

    Only `checkpoint_variables()` are restored: a training checkpoint's global step, learning
    rate and optimizer slots are not (resuming is main.resume_init's job). With
    `fine_tune_scope`, variables under that scope whose shapes differ (a classifier for another
    number of classes) keep their initial values instead, and the log lists them.
    """

    def __init__(self, path, fine_tune_scope=None):
        self.path = resolve_checkpoint(path)
        self.fine_tune_scope = fine_tune_scope

    def _setup_graph(self):
        variables = checkpoint_variables()
        missing, mismatched = check_checkpoint(self.path, variables)
        skipped = [m for m in mismatched
                   if self.fine_tune_scope and m[0].startswith(self.fine_tune_scope + '/')]
        mismatched = [m for m in mismatched if m not in skipped]
        if missing or mismatched:
            raise CheckpointError(checkpoint_mismatch_message(self.path, missing, mismatched))
        if skipped:
            logger.info('Fine-tuning from {}: not restoring {}'.format(self.path, '; '.join(
                '{} (checkpoint {}, model {})'.format(*m) for m in skipped)))
        skipped_names = {name for name, _, _ in skipped}
        self._restored = [v for v in variables if v.op.name not in skipped_names]

    def _values(self, names):
        """The checkpoint's {variable name: value} of `names`."""
        values = dict(np.load(self.path)) if self.path.endswith('.npz') else load_checkpoint_vars(self.path)
        return {re.sub(':0$', '', k): v for k, v in values.items() if re.sub(':0$', '', k) in names}

    def _run_init(self, sess):
        values = self._values({v.op.name for v in self._restored})
        try:
            SessionUpdate(sess, self._restored).update({v.name: values[v.op.name] for v in self._restored})
        except (ValueError, tf.errors.OpError) as e:
            raise CheckpointError('{}: restoring failed: {}'.format(self.path, getattr(e, 'message', e))) from None
        logger.info('Restored {} variables from {}.'.format(len(self._restored), self.path))
