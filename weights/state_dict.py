"""PyTorch state dicts (timm's `.safetensors`, the authors' `.pth`) as this repo's variables: the one place
where weights of another framework are renamed and laid out anew.

A network that has a PyTorch form says where each of its layers is in the state dict (`torch_layers()`:
{layer: (conv or Linear module, batch norm module or None, kind)}); the variables of a layer map to
`<conv>.weight` / `<conv>.bias` and `<bn>.weight, bias, running_mean, running_var`. Kernels are transposed:
conv [out, in, kh, kw] to [kh, kw, in, out], depthwise [C * m, 1, kh, kw] to [kh, kw, C, m], Linear
[out, in] to [1, 1, in, out]. BN's `num_batches_tracked` counters and thop's `total_ops`/`total_params`
(in the authors' files) are ignored; the authors' GhostNetV3 keys are spelled as timm's (`timm_key`).
"""
import os
import re

import compat  # noqa: F401  (must come before TensorFlow)
import numpy as np
import tensorflow as tf
from tensorpack.tfutils.sessinit import SessionInit
from tensorpack.tfutils.varmanip import SessionUpdate
from tensorpack.utils import logger

from weights.checkpoint import CheckedInit, CheckpointError, checkpoint_variables

tfv1 = tf.compat.v1

SAFETENSORS_SUFFIX = '.safetensors'
PICKLE_SUFFIXES = ('.pth', '.pth.tar', '.pt')
# a variable's name under its layer: the kernel and bias, or its batch norm's (`bn/` or `output/`)
VARIABLE = re.compile(r'^(?P<layer>.+?)/(?:(?P<kernel>W|DW|b)|(?:bn|output)/(?P<bn>beta|gamma|mean/EMA|variance/EMA))$')
TORCH_LEAVES = {'W': 'weight', 'DW': 'weight', 'b': 'bias',
                'beta': 'bias', 'gamma': 'weight', 'mean/EMA': 'running_mean', 'variance/EMA': 'running_var'}
AUTHORS_BN = re.compile(r'\.bn\.(?=[a-z_]+$)')
IGNORED_KEYS = re.compile(r'(^|\.)(num_batches_tracked|total_ops|total_params)$')


def is_state_dict(path):
    """Whether `--load path` names a PyTorch state dict (by its suffix)."""
    return path.endswith((SAFETENSORS_SUFFIX,) + PICKLE_SUFFIXES)


def read_state_dict(path):
    """{key: array} of a .safetensors file (read without torch) or a .pth file (torch, weights only), less the
    ignored keys; CheckpointError naming the file when it can not be read."""
    if not os.path.isfile(path):
        raise CheckpointError('{} does not exist'.format(path))
    stored = read_safetensors(path) if path.endswith(SAFETENSORS_SUFFIX) else read_pickled(path)
    return {timm_key(key): value for key, value in stored.items() if not IGNORED_KEYS.search(key)}


def timm_key(key):
    """timm's spelling of a key of the authors' files (as timm's `checkpoint_filter_fn` renames it): their
    GhostNetV3's conv + BN branches call the batch norm `bn`, timm's `bn1`."""
    if AUTHORS_BN.search(key) and ('.ghost' in key or '.dw_rpr_' in key):
        return AUTHORS_BN.sub('.bn1.', key)
    return key


def read_safetensors(path):
    """A .safetensors file as NumPy arrays (safetensors is imported here: the training-only Horovod stack,
    .ci/horovod, does without it)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CheckpointError('{}: not a readable safetensors file: {}'.format(path, first_line(e))) from None


def read_pickled(path):
    """A torch.save file loaded by torch with weights_only=True (it builds tensors and plain containers only):
    its `state_dict` entry if it has one, else itself."""
    try:
        import torch
    except ImportError:
        raise CheckpointError('{}: reading a PyTorch pickle needs torch, which is not installed; load the '
                              'same weights as .safetensors (timm\'s model.safetensors) instead'.format(path)) from None
    try:
        stored = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises many kinds; any of them means refused)
        raise CheckpointError('{}: torch.load(weights_only=True) refused it: {}'.format(path, first_line(e))) from None
    stored = stored.get('state_dict', stored) if isinstance(stored, dict) else stored
    if not isinstance(stored, dict):
        raise CheckpointError('{}: holds a {}, not a state dict'.format(path, type(stored).__name__))
    return {key: value.numpy() for key, value in stored.items() if isinstance(value, torch.Tensor)}


def first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def torch_key(name, scope, torch_layers):
    """(timm's key, kind) of the variable `name`, or None when `torch_layers` has no place for it."""
    match = VARIABLE.match(name[len(scope) + 1:]) if name.startswith(scope + '/') else None
    if not match or match.group('layer') not in torch_layers:
        return None
    conv, bn, kind = torch_layers[match.group('layer')]
    module = conv if match.group('kernel') else bn
    return module and '{}.{}'.format(module, TORCH_LEAVES[match.group('kernel') or match.group('bn')]), kind


def torch_shape(shape, kind):
    """The shape PyTorch stores a variable of `shape` in (see the module's doc)."""
    if len(shape) != 4:
        return list(shape)
    height, width, inputs, outputs = shape
    if kind == 'depthwise':
        return [inputs * outputs, 1, height, width]
    return [outputs, inputs] if kind == 'linear' else [outputs, inputs, height, width]


def from_torch_layout(value, shape, kind):
    """A PyTorch value as the variable of `shape` holds it."""
    if len(shape) != 4:
        return value
    if kind == 'depthwise':
        return value.reshape(shape[2], shape[3], shape[0], shape[1]).transpose(2, 3, 0, 1)
    if kind == 'linear':
        return value.T.reshape(shape)
    return value.transpose(2, 3, 1, 0)


def torch_layers_of(model, path):
    """`model.torch_layers()` (model: a network or its class); CheckpointError when it has no PyTorch form."""
    if not hasattr(model, 'torch_layers'):
        name = model.__name__ if isinstance(model, type) else type(model).__name__
        raise CheckpointError('{}: a PyTorch state dict, which {} can not load (--arch ghostnet-pytorch, '
                              'ghostnetv2 and ghostnetv3 can)'.format(path, name))
    return model.torch_layers()


def state_dict_num_classes(model_class, path):
    """The number of classes of a state dict for `model_class`: its classifier bias's length."""
    key, _ = torch_key(model_class.scope + '/' + model_class.classifier_bias, model_class.scope,
                       torch_layers_of(model_class, path))
    stored = read_state_dict(path)
    if key not in stored:
        raise CheckpointError('{} has no {}: not a state dict of {}'.format(path, key, model_class.__name__))
    return len(stored[key])


def session_init(path, model, fine_tune_scope=None):
    """What restores `--load path` into `model`: StateDictInit for a PyTorch state dict, else CheckedInit."""
    if not is_state_dict(path):
        return CheckedInit(path, fine_tune_scope)
    return StateDictInit(path, model.scope, torch_layers_of(model, path), fine_tune_scope)


class StateDictInit(SessionInit):
    """Restores every model variable from a PyTorch state dict that holds exactly the model's keys, shapes
    equal; else CheckpointError (one line) naming the first key that does not fit and what was expected.
    With `fine_tune_scope`, variables under it whose shapes differ (another number of classes) keep their
    initial values, as CheckedInit's."""

    def __init__(self, path, scope, torch_layers, fine_tune_scope=None):
        self.path, self.scope, self.torch_layers = path, scope, torch_layers
        self.fine_tune_scope = fine_tune_scope
        self.stored = read_state_dict(path)

    def _setup_graph(self):
        self._variables = {}     # timm's key: (variable, kind), in the order the network makes them (as timm's)
        restored = set(checkpoint_variables())
        for variable in (v for v in tfv1.global_variables() if v in restored):
            place = torch_key(variable.op.name, self.scope, self.torch_layers)
            if place is None or place[0] is None:
                raise CheckpointError('{}: the model\'s variable {} has no place in a PyTorch state dict'.format(
                    self.path, variable.op.name))
            self._variables[place[0]] = (variable, place[1])
        self._skipped = self.check_keys()

    def check_keys(self):
        """The keys left to their initial values (fine-tuning); CheckpointError at the first that does not fit."""
        skipped = []
        for key, (variable, kind) in self._variables.items():
            expected = torch_shape(variable.shape.as_list(), kind)
            if key not in self.stored:
                raise CheckpointError('{} does not fit the model: key {} is missing (expected shape {}, for '
                                      '{})'.format(self.path, key, expected, variable.op.name))
            shape = list(self.stored[key].shape)
            if shape != expected and self.fine_tune_scope and variable.op.name.startswith(self.fine_tune_scope + '/'):
                skipped.append(key)
            elif shape != expected:
                raise CheckpointError('{} does not fit the model: {} has shape {}, expected {} (for {}); another '
                                      'width or network?'.format(self.path, key, shape, expected, variable.op.name))
        unexpected = [key for key in self.stored if key not in self._variables]
        if unexpected:
            raise CheckpointError('{} does not fit the model: unexpected key {} (shape {}); another network or '
                                  'form?'.format(self.path, unexpected[0], list(self.stored[unexpected[0]].shape)))
        if skipped:
            logger.info('Fine-tuning from {}: not restoring {}'.format(self.path, ', '.join(skipped)))
        return skipped

    def _run_init(self, sess):
        restored = [(self._variables[key], value) for key, value in self.stored.items() if key not in self._skipped]
        variables = [variable for (variable, _), _ in restored]
        values = {variable.name: from_torch_layout(value, variable.shape.as_list(), kind).astype(np.float32)
                  for (variable, kind), value in restored}
        try:
            SessionUpdate(sess, variables).update(values)
        except (ValueError, tf.errors.OpError) as e:
            raise CheckpointError('{}: restoring failed: {}'.format(self.path, first_line(e))) from None
        logger.info('Restored {} variables from {}.'.format(len(variables), self.path))
