"""Export GhostNet for serving (SavedModel, TFLite; batch norm folded) and predict top-5 classes.

The exported network is rebuilt as a plain `tf.Module` from the checkpoint's values and
ghostnet.py's architecture table; every batch norm is folded into the convolution before it
and dropout is gone. The serving signature takes uint8 RGB images [N, S, S, 3] and returns
`probabilities`, `top5` (int32 class indices) and `logits`.
"""
import math
import os

import compat  # noqa: F401  (must come before TensorFlow)
import numpy as np
import tensorflow as tf
from tensorpack.predict import OfflinePredictor, PredictConfig
from tensorpack.tfutils.tower import TowerContext
from tensorpack.tfutils.varmanip import load_checkpoint_vars
from tensorpack.utils import logger

from ghostnet import GhostNet, bottleneck_plan
from checkpoint import (CheckedInit, CheckpointError, check_checkpoint, checkpoint_mismatch_message,
                        checkpoint_shapes, checkpoint_variables, resolve_checkpoint)
from imagenet_utils import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, DataError, decode_image, eval_augmentor

tfv1 = tf.compat.v1

BN_EPSILON = 1e-5          # tensorpack BatchNorm's default, used by every GhostNet batch norm
QUANTIZE_MODES = ('none', 'dynamic', 'int8')
REPRESENTATIVE_LIMIT = 200  # images fed to the int8 calibration at most
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


# ---------------------------------------------------------------- images

def load_rgb_batch(paths, size):
    """Images as the serving signature takes them: uint8 RGB [N, size, size, 3], evaluation-preprocessed."""
    augmentor = eval_augmentor(size)
    return np.stack([augmentor.augment(decode_image(path))[..., ::-1] for path in paths])


def image_files(directory):
    """Image files (by extension) under `directory`, recursively, sorted."""
    found = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names
             if name.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
        raise DataError('{}: no image files ({}) in it or below'.format(
            directory, ', '.join(IMAGE_EXTENSIONS)))
    return sorted(found)


# ---------------------------------------------------------------- batch-norm folding

def checkpoint_num_classes(checkpoint, scope=GhostNet.scope):
    """The number of classes of a checkpoint (prefix, log directory or .npz): its classifier's width."""
    path = resolve_checkpoint(checkpoint)
    classifier_bias = scope + '/Logits/Conv2d_1c_1x1/b'
    shapes = checkpoint_shapes(path)
    if classifier_bias not in shapes:
        raise CheckpointError('{} has no {}: not a GhostNet checkpoint'.format(path, classifier_bias))
    return shapes[classifier_bias][0]


def checked_values(model, checkpoint):
    """{variable name below the model scope: ndarray} of a checkpoint; CheckpointError if it does not fit."""
    path = resolve_checkpoint(checkpoint)
    with tf.Graph().as_default():
        inputs = [tfv1.placeholder(spec.dtype, spec.shape, spec.name) for spec in model.get_input_signature()]
        with TowerContext('', is_training=False):
            model.build_graph(*inputs)
        missing, mismatched = check_checkpoint(path, checkpoint_variables())
    if missing or mismatched:
        raise CheckpointError(checkpoint_mismatch_message(path, missing, mismatched))
    prefix = model.scope + '/'
    return {name[len(prefix):]: value for name, value in load_checkpoint_vars(path).items()
            if name.startswith(prefix)}


def fold_batch_norm(kernel, gamma, beta, mean, variance, epsilon=BN_EPSILON, depthwise=False):
    """Kernel and bias of `conv` then inference batch norm, as one conv: W * s, beta - mean * s.

    s = gamma / sqrt(variance + epsilon) per output channel; a depthwise kernel [k, k, in, mult]
    outputs channel `i * mult + m`, so s is laid out as [in, mult] there.
    """
    scale = gamma.astype(np.float64) / np.sqrt(variance.astype(np.float64) + epsilon)
    bias = beta - mean * scale
    if depthwise:
        scale = scale.reshape(kernel.shape[2:])
    return (kernel * scale).astype(np.float32), bias.astype(np.float32)


def folded_layer(values, layer, kernel_name='W', depthwise=False):
    """Folded (kernel, bias) of checkpoint layer `layer`; its batch norm is under `bn/` or `output/`."""
    bn = layer + ('/bn' if layer + '/bn/gamma' in values else '/output')
    return fold_batch_norm(values[layer + '/' + kernel_name], values[bn + '/gamma'], values[bn + '/beta'],
                           values[bn + '/mean/EMA'], values[bn + '/variance/EMA'], depthwise=depthwise)


# ---------------------------------------------------------------- the folded network

class Conv(tf.Module):
    """A convolution with bias (batch norm folded in), TF `SAME` padding, optional ReLU."""

    def __init__(self, kernel, bias, stride=1, relu=False, depthwise=False):
        super().__init__()
        self.kernel = tf.Variable(kernel, trainable=False, name='kernel')
        self.bias = tf.Variable(bias, trainable=False, name='bias')
        self.strides = [1, stride, stride, 1]
        self.relu = relu
        self.depthwise = depthwise

    def __call__(self, x):
        if self.depthwise:
            x = tf.nn.depthwise_conv2d(x, self.kernel, self.strides, 'SAME')
        else:
            x = tf.nn.conv2d(x, self.kernel, self.strides, 'SAME')
        x = tf.nn.bias_add(x, self.bias)
        return tf.nn.relu(x) if self.relu else x


class Dense(tf.Module):
    """A 1x1 convolution on pooled [N, C] features as a matmul with bias, optional ReLU."""

    def __init__(self, kernel, bias, relu=False):
        super().__init__()
        self.kernel = tf.Variable(kernel.reshape(kernel.shape[-2:]), trainable=False, name='kernel')
        self.bias = tf.Variable(bias, trainable=False, name='bias')
        self.relu = relu

    def __call__(self, x):
        x = tf.matmul(x, self.kernel) + self.bias
        return tf.nn.relu(x) if self.relu else x


class Ghost(tf.Module):
    """Ghost module: primary 1x1 conv, cheap depthwise conv on it, sliced to `filters` in all, concat."""

    def __init__(self, values, layer, filters, ratio, relu):
        super().__init__()
        self.primary = Conv(*folded_layer(values, layer + '/conv1'), relu=relu)
        self.cheap = None
        if ratio > 1:
            self.cheap = Conv(*folded_layer(values, layer + '/dw1', 'DW', depthwise=True),
                              relu=relu, depthwise=True)
        init_channels = math.ceil(filters / ratio)
        self.cheap_channels = filters - init_channels
        self.needs_slice = init_channels * (ratio - 1) != self.cheap_channels

    def __call__(self, x):
        primary = self.primary(x)
        if self.cheap is None:
            return primary
        cheap = self.cheap(primary)
        if self.needs_slice:
            cheap = cheap[..., :self.cheap_channels]
        return tf.concat([primary, cheap], -1)


class SqueezeExcite(tf.Module):
    """SE: spatial mean, fc + ReLU, fc, gate clip(x, 0, 1), multiply."""

    def __init__(self, values, layer):
        super().__init__()
        self.reduce = Dense(values[layer + '/fc1/W'], values[layer + '/fc1/b'], relu=True)
        self.expand = Dense(values[layer + '/fc2/W'], values[layer + '/fc2/b'])

    def __call__(self, x):
        gate = tf.clip_by_value(self.expand(self.reduce(tf.reduce_mean(x, [1, 2]))), 0., 1.)
        return x * gate[:, tf.newaxis, tf.newaxis, :]


class GhostBottleneck(tf.Module):
    """Bottleneck `Conv2d_<index>`: up Ghost, [stride-2 depthwise], [SE], down Ghost, plus the shortcut."""

    def __init__(self, values, index, spec, in_channels, hidden, out, se, ratio):
        super().__init__()
        name = 'Conv2d_{}'.format(index)
        self.shortcut = []
        if not (spec.stride == 1 and in_channels == spec.out):
            self.shortcut = [Conv(*folded_layer(values, name + '_shortcut_dw', depthwise=True),
                                  stride=spec.stride, depthwise=True),
                             Conv(*folded_layer(values, name + '_shortcut_1x1'))]
        self.body = [Ghost(values, name + '_up_pointwise', hidden, ratio, relu=True)]
        if spec.stride == 2:
            self.body.append(Conv(*folded_layer(values, name + '_depthwise', depthwise=True),
                                  stride=2, depthwise=True))
        if se and spec.se:
            self.body.append(SqueezeExcite(values, name + '_se'))
        self.body.append(Ghost(values, name + '_down_pointwise', out, ratio, relu=False))

    def __call__(self, x):
        shortcut = x
        for layer in self.shortcut:
            shortcut = layer(shortcut)
        for layer in self.body:
            x = layer(x)
        return x + shortcut


class FoldedGhostNet(tf.Module):
    """GhostNet inference with batch norm folded and no dropout; `serve` is the serving signature."""

    def __init__(self, model, values):
        super().__init__()
        self.image_shape = model.image_shape
        self.num_classes = model.num_classes
        self.stem = Conv(*folded_layer(values, 'Conv2d_0'), stride=2, relu=True)
        self.blocks = [GhostBottleneck(values, *plan, se=model.se, ratio=model.ratio_code[plan[0] - 1])
                       for plan in bottleneck_plan(model.width)]
        self.last = Conv(*folded_layer(values, 'Conv2d_17'), relu=True)
        self.head = Dense(*folded_layer(values, 'Conv2d_18'), relu=True)
        self.classifier = Dense(values['Logits/Conv2d_1c_1x1/W'], values['Logits/Conv2d_1c_1x1/b'])
        self.serve = tf.function(self.classify, input_signature=[
            tf.TensorSpec([None, self.image_shape, self.image_shape, 3], tf.uint8, name='images')])

    def logits(self, image_bgr):
        """Logits of float BGR images in [0, 255], preprocessed as ImageNetModel.image_preprocess does."""
        mean = tf.constant(IMAGENET_MEAN_RGB[::-1], tf.float32)
        std = tf.constant(IMAGENET_STD_RGB[::-1], tf.float32)
        x = self.stem((image_bgr * (1.0 / 255) - mean) / std)
        for block in self.blocks:
            x = block(x)
        x = tf.reduce_mean(self.last(x), [1, 2])
        return self.classifier(self.head(x))

    def classify(self, images):
        """uint8 RGB images to {'probabilities', 'top5', 'logits'}."""
        logits = self.logits(tf.cast(tf.reverse(images, [-1]), tf.float32))
        probabilities = tf.nn.softmax(logits)
        top5 = tf.math.top_k(probabilities, min(5, self.num_classes)).indices
        return {'probabilities': probabilities, 'top5': top5, 'logits': logits}


# ---------------------------------------------------------------- SavedModel and TFLite

def file_size(path):
    """Bytes in a file, or in all files under a directory."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def log_written(what, path):
    """Log where `what` was written and its size."""
    logger.info('Wrote {} to {} ({:.2f} MB)'.format(what, path, file_size(path) / 2 ** 20))


def export_saved_model(model, checkpoint, directory):
    """The folded network of `model` with the checkpoint's values as a SavedModel in `directory`."""
    if not tf.executing_eagerly():
        raise RuntimeError('export needs eager execution: call it outside any tf.Graph or tf.Session '
                           'context, in a process where tensorpack training has not disabled eager')
    module = FoldedGhostNet(model, checked_values(model, checkpoint))
    tf.saved_model.save(module, directory,
                        signatures={'serving_default': module.serve.get_concrete_function()})
    log_written('SavedModel (uint8 RGB [N, {0}, {0}, 3] -> probabilities, top5, logits)'.format(
        model.image_shape), directory)
    return directory


def export_tflite(saved_model_dir, path, quantize='none', representative_images=None):
    """Convert a SavedModel to a TFLite flatbuffer; int8 calibrates on uint8 RGB `representative_images`."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError('quantize must be one of {}, got {!r}'.format(QUANTIZE_MODES, quantize))
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    if quantize != 'none':
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == 'int8':
        if representative_images is None or not len(representative_images):
            raise DataError('int8 quantization needs representative images')
        converter.representative_dataset = lambda: ([image[np.newaxis]] for image in representative_images)
    with open(path, 'wb') as f:
        f.write(converter.convert())
    log_written('TFLite flatbuffer (quantize={})'.format(quantize), path)
    return path


def export(model, checkpoint, out_dir, tflite=False, quantize='none', representative=None):
    """`--export`: OUT_DIR/saved_model and, with `tflite` or quantization, OUT_DIR/ghostnet[_QUANT].tflite."""
    if quantize == 'int8' and not representative:
        raise DataError('--quantize int8 needs --representative DIR, a folder of images to calibrate on')
    representative_images = None
    if quantize == 'int8':
        paths = image_files(representative)[:REPRESENTATIVE_LIMIT]
        representative_images = load_rgb_batch(paths, model.image_shape)
        logger.info('Calibrating int8 on {} images from {}'.format(len(paths), representative))
    written = [export_saved_model(model, checkpoint, os.path.join(out_dir, 'saved_model'))]
    if tflite or quantize != 'none':
        name = 'ghostnet.tflite' if quantize == 'none' else 'ghostnet_{}.tflite'.format(quantize)
        written.append(export_tflite(written[0], os.path.join(out_dir, name), quantize,
                                     representative_images))
    return written


# ---------------------------------------------------------------- prediction

def class_names(meta_dir, num_classes):
    """Per class: its `synset_words.txt` line, else its `synsets.txt` wnid, else its index."""
    for filename in ('synset_words.txt', 'synsets.txt'):
        path = os.path.join(meta_dir or '', filename)
        if meta_dir and os.path.isfile(path):
            with open(path) as f:
                names = [line.strip() for line in f if line.strip()]
            if len(names) == num_classes:
                return names
            logger.warn('{} has {} classes, the model {}; showing indices'.format(
                path, len(names), num_classes))
            break
    return [str(index) for index in range(num_classes)]


def predict(model, checkpoint, paths, meta_dir=None):
    """`--predict`: [(path, [(class index, name, probability)] * 5)] from the tensorpack graph."""
    images = load_rgb_batch(paths, model.image_shape)[..., ::-1].astype(np.float32)
    predictor = OfflinePredictor(PredictConfig(
        model=model, session_init=CheckedInit(checkpoint), input_names=['input'], output_names=['prob']))
    names = class_names(meta_dir, model.num_classes)
    probabilities, = predictor(images)
    return [(path, [(int(c), names[c], float(p[c])) for c in np.argsort(-p)[:5]])
            for path, p in zip(paths, probabilities)]
