"""The Ghost module (a primary conv plus a cheap depthwise op) and the layers GhostNet uses."""
import math

import compat  # noqa: F401  (must come before TensorFlow)
import tensorflow as tf
from tensorpack.models import BatchNorm, Conv2D, layer_register
from tensorpack.tfutils.argscope import argscope

tfv1 = tf.compat.v1


def kernel_initializer():
    """The released model's initializer for every kernel: variance scaling 2.0 (He)."""
    return tfv1.variance_scaling_initializer(scale=2.0)


def is_nchw(data_format):
    return data_format in ('NCHW', 'channels_first')


def channel_axis(data_format):
    return 1 if is_nchw(data_format) else 3


def spatial_axes(data_format):
    return [2, 3] if is_nchw(data_format) else [1, 2]


def batch_norm_format(data_format):
    """The activations call BatchNorm without a data format: give it the layer's."""
    return argscope(BatchNorm, data_format='channels_first' if is_nchw(data_format) else 'channels_last')


def BNReLU(x, name=None):
    """BatchNorm then ReLU; the BN variables are under `bn/` whatever name the layer passes."""
    return tf.nn.relu(BatchNorm('bn', x))


def BNNoReLU(x, name=None):
    """BatchNorm alone, under the name the layer passes, else `bn/`.

    tensorpack's Conv2D passes none (`conv1/bn/...`); DepthConv passes `output`, which gives the
    released checkpoint's `dw1/output/...` and `_depthwise/output/...` names.
    """
    return BatchNorm(name or 'bn', x)


@layer_register(log_shape=True)
def DepthConv(x, kernel_size, channel_multiplier=1, strides=1, data_format='NHWC',
              activation=None, kernel_name='W', W_init=None):
    """Depthwise conv with TF `SAME` padding; the kernel is `[k, k, in, channel_multiplier]`."""
    in_channels = int(x.shape[channel_axis(data_format)])
    kernel = tfv1.get_variable(
        kernel_name, [kernel_size, kernel_size, in_channels, channel_multiplier],
        initializer=W_init or kernel_initializer())
    stride4 = [1, 1, strides, strides] if is_nchw(data_format) else [1, strides, strides, 1]
    out = tf.nn.depthwise_conv2d(x, kernel, stride4, 'SAME',
                                 data_format='NCHW' if is_nchw(data_format) else 'NHWC')
    if activation is None:
        return tf.identity(out, name='output')
    with batch_norm_format(data_format):
        return activation(out, name='output')


@layer_register(log_shape=True)
def GhostModule(x, filters, kernel_size=1, dw_size=3, ratio=2, strides=1, data_format='NHWC',
                activation=None, use_bias=False):
    """`ceil(filters / ratio)` intrinsic maps from a conv, the rest from a cheap depthwise op on them.

    Variables: `conv1/W`, `conv1/bn/*` and `dw1/DW`, `dw1/{bn,output}/*` (with/without ReLU).
    `ratio == 1` is the primary conv alone.
    """
    init_channels = math.ceil(filters / ratio)
    with batch_norm_format(data_format):
        primary = Conv2D('conv1', x, init_channels, kernel_size, strides=strides,
                         data_format=data_format, activation=activation, use_bias=use_bias,
                         kernel_initializer=kernel_initializer())
    if ratio == 1:
        return tf.identity(primary, name='output')
    cheap = DepthConv('dw1', primary, dw_size, channel_multiplier=ratio - 1,
                      data_format=data_format, activation=activation, kernel_name='DW')
    axis = channel_axis(data_format)
    cheap = cheap[:, :filters - init_channels] if axis == 1 else cheap[..., :filters - init_channels]
    return tf.concat([primary, cheap], axis, name='output')


@layer_register(log_shape=True)
def SELayer(x, reduction=4, data_format='NHWC'):
    """Squeeze-and-excitation with the released hard gate `clip(x, 0, 1)`."""
    channels = int(x.shape[channel_axis(data_format)])
    squeezed = tf.reduce_mean(x, spatial_axes(data_format), keepdims=True)
    fc_args = dict(kernel_size=1, use_bias=True, data_format=data_format,
                   kernel_initializer=kernel_initializer())
    hidden = Conv2D('fc1', squeezed, int(channels / reduction), activation=tf.nn.relu, **fc_args)
    gate = tf.clip_by_value(Conv2D('fc2', hidden, channels, **fc_args), 0., 1.)
    return tf.multiply(x, gate, name='output')
