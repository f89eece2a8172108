"""The Ghost module and one bottleneck against hand counts and a NumPy forward pass written from the facts."""
import math

import numpy as np
import pytest
import tensorflow as tf
from tensorpack.tfutils.argscope import argscope
from tensorpack.tfutils.tower import TowerContext

import myconv2d
from conftest import random_values
from ghostnet import BOTTLENECKS, GhostNet
from myconv2d import ConvBN, DepthConv, GhostModule, SELayer, channel_parts

tfv1 = tf.compat.v1
EPSILON = 1e-5


def randomize(sess, graph, seed=0, variances=(0.5, 1.5)):
    """Random values for every variable (conftest.random_values), loaded; returns {name: value}."""
    variables = graph.get_collection(tfv1.GraphKeys.GLOBAL_VARIABLES)
    values = random_values(variables, seed, variance_range=variances)
    for var in variables:
        var.load(values[var.op.name], sess)
    return values


def run_layer(build_fn, inputs, seed=0, variances=(0.5, 1.5)):
    """Build `build_fn(x)` in inference mode on `inputs`; returns (output, variable values)."""
    graph = tf.Graph()
    with graph.as_default(), TowerContext('', is_training=False):
        x = tfv1.placeholder(tf.float32, inputs.shape)
        out = build_fn(x)
        with tfv1.Session() as sess:
            values = randomize(sess, graph, seed, variances)
            return sess.run(out, {x: inputs}), values


@pytest.mark.parametrize('filters, ratio, dw_size', [
    (16, 2, 3), (17, 2, 3), (15, 3, 5), (7, 4, 1), (24, 1, 3), (9, 5, 3)])
def test_output_channels(filters, ratio, dw_size):
    inputs = np.random.RandomState(0).normal(size=(1, 8, 8, 5)).astype(np.float32)
    out, values = run_layer(lambda x: GhostModule('g', x, filters, dw_size=dw_size, ratio=ratio),
                            inputs)
    assert out.shape == (1, 8, 8, filters)
    init_channels = math.ceil(filters / ratio)
    assert values['g/conv1/W'].shape == (1, 1, 5, init_channels)
    if ratio > 1:
        assert values['g/dw1/DW'].shape == (dw_size, dw_size, init_channels, ratio - 1)
        assert 'g/dw1/bn/gamma' in values
    else:
        assert not any(name.startswith('g/dw1') for name in values)


def ghost_and_plain(inputs, ghost_fn, plain_fn):
    """Outputs of Ghost module `g` and of a plain ConvBN `plain` given `g/conv1`'s values, and the values."""
    graph = tf.Graph()
    with graph.as_default(), TowerContext('', is_training=False):
        x = tfv1.placeholder(tf.float32, inputs.shape)
        ghost, plain = ghost_fn(x), plain_fn(x)
        with tfv1.Session() as sess:
            values = randomize(sess, graph)
            for var in graph.get_collection(tfv1.GraphKeys.GLOBAL_VARIABLES):
                if var.op.name.startswith('plain/'):
                    var.load(values[var.op.name.replace('plain/', 'g/conv1/')], sess)
            return sess.run([ghost, plain], {x: inputs}) + [values]


def test_intrinsic_channels_are_a_plain_conv_with_batch_norm():
    inputs = np.random.RandomState(1).normal(size=(2, 9, 9, 6)).astype(np.float32)
    ghost_out, plain_out, _ = ghost_and_plain(inputs, lambda x: GhostModule('g', x, 11, ratio=3, relu=False),
                                              lambda x: ConvBN('plain', x, 4, 1, relu=False))
    assert ghost_out.shape[-1] == 11
    np.testing.assert_allclose(ghost_out[..., :4], plain_out, rtol=1e-5, atol=1e-5)
    assert not np.allclose(ghost_out[..., 4:8], plain_out)


@pytest.mark.gpu
def test_nchw_equals_nhwc():
    inputs = np.random.RandomState(2).normal(size=(2, 10, 10, 6)).astype(np.float32)
    nhwc, _ = run_layer(lambda x: GhostModule('g', x, 13, dw_size=3, ratio=3, strides=2), inputs)
    try:
        nchw, _ = run_layer(lambda x: tf.transpose(GhostModule(
            'g', tf.transpose(x, [0, 3, 1, 2]), 13, dw_size=3, ratio=3, strides=2,
            data_format='NCHW'), [0, 2, 3, 1]), inputs)
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError) as e:
        pytest.skip('TensorFlow on this device does not run NCHW convolutions: {}'.format(
            e.message.splitlines()[0]))
    np.testing.assert_allclose(nchw, nhwc, rtol=1e-4, atol=1e-4)


# ---- NumPy reference, written from GHOSTNET_FACTS.md ----

def same_padding(size, kernel, stride):
    """TF SAME: output ceil(size / stride), padding split with the extra pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def np_conv(x, kernel, stride=1):
    """NHWC conv, kernel [k, k, in, out], TF SAME padding."""
    k = kernel.shape[0]
    pad_h, pad_w = same_padding(x.shape[1], k, stride), same_padding(x.shape[2], k, stride)
    x = np.pad(x, [(0, 0), pad_h, pad_w, (0, 0)])
    out_h, out_w = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    out = np.zeros(x.shape[:1] + (out_h, out_w, kernel.shape[3]))
    for i in range(k):
        for j in range(k):
            out += x[:, i:i + stride * out_h:stride, j:j + stride * out_w:stride] @ kernel[i, j]
    return out


def np_depthwise(x, kernel, stride=1):
    """Depthwise conv, kernel [k, k, in, mult]; output channel c * mult + m."""
    k, channels, mult = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    dense = np.zeros((k, k, channels, channels * mult))
    for c in range(channels):
        dense[:, :, c, c * mult:(c + 1) * mult] = kernel[:, :, c, :]
    return np_conv(x, dense, stride)


def np_bn(x, v, prefix):
    return (x - v[prefix + '/mean/EMA']) / np.sqrt(v[prefix + '/variance/EMA'] + EPSILON) \
        * v[prefix + '/gamma'] + v[prefix + '/beta']


def relu(x):
    return np.maximum(x, 0)


def np_ghost(x, v, name, filters, relu_after):
    act = relu if relu_after else (lambda t: t)
    primary = act(np_bn(np_conv(x, v[name + '/conv1/W']), v, name + '/conv1/bn'))
    cheap_bn = name + ('/dw1/bn' if relu_after else '/dw1/output')
    cheap = act(np_bn(np_depthwise(primary, v[name + '/dw1/DW']), v, cheap_bn))
    return np.concatenate([primary, cheap], -1)[..., :filters]


def np_bottleneck(x, v, name, kernel, stride, hidden, out):
    """Shortcut; up Ghost (ReLU); stride-2 depthwise + BN; SE with clip gate; down Ghost (no ReLU); add."""
    shortcut = np_bn(np_depthwise(x, v[name + '_shortcut_dw/W'], stride), v, name + '_shortcut_dw/output')
    shortcut = np_bn(np_conv(shortcut, v[name + '_shortcut_1x1/W']), v, name + '_shortcut_1x1/bn')
    y = np_ghost(x, v, name + '_up_pointwise', hidden, relu_after=True)
    y = np_bn(np_depthwise(y, v[name + '_depthwise/W'], stride), v, name + '_depthwise/output')
    squeezed = y.mean(axis=(1, 2), keepdims=True)
    squeezed = relu(np_conv(squeezed, v[name + '_se/fc1/W']) + v[name + '_se/fc1/b'])
    gate = np.clip(np_conv(squeezed, v[name + '_se/fc2/W']) + v[name + '_se/fc2/b'], 0, 1)
    y = np_ghost(y * gate, v, name + '_down_pointwise', out, relu_after=False)
    return y + shortcut


def test_stride2_bottleneck_with_se_matches_numpy():
    spec = BOTTLENECKS[3]                  # Conv2d_4: 5x5, stride 2, 24 -> 40, hidden 72, SE
    assert (spec.kernel, spec.stride, spec.out, spec.se) == (5, 2, 40, True)
    inputs = np.random.RandomState(3).normal(size=(2, 14, 14, 24)).astype(np.float32)
    model = GhostNet()

    def bottleneck(x):
        with model.layer_defaults():
            return model.bottleneck(4, spec, 24, 72, 40, x)
    got, values = run_layer(bottleneck, inputs, seed=4)
    want = np_bottleneck(inputs.astype(np.float64), values, 'Conv2d_4', 5, 2, 72, 40)
    assert got.shape == want.shape == (2, 7, 7, 40)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def executed_op_types(build_fn, inputs):
    """(types, fused op lists) of the ops a session runs for `build_fn(x)` in inference mode, after
    grappler's rewrites."""
    with tf.Graph().as_default(), TowerContext('', is_training=False), tfv1.Session() as sess:
        x = tfv1.placeholder(tf.float32, inputs.shape)
        out = build_fn(x)
        sess.run(tfv1.global_variables_initializer())
        metadata = tfv1.RunMetadata()
        sess.run(out, {x: inputs}, tfv1.RunOptions(output_partition_graphs=True), metadata)
    nodes = [node for graph in metadata.partition_graphs for node in graph.node]
    return ([node.op for node in nodes],
            [[op.decode() for op in node.attr['fused_ops'].list.s] for node in nodes if 'fused_ops' in node.attr])


@pytest.mark.parametrize('depthwise, multiplier, relu', [(False, 1, True), (True, 1, False), (True, 3, True)])
def test_inference_folds_batch_norm_into_the_conv(depthwise, multiplier, relu):
    inputs = np.random.RandomState(3).normal(size=(2, 9, 9, 4)).astype(np.float32)

    def layer(x):
        if depthwise:
            return DepthConv('c', x, 3, channel_multiplier=multiplier, strides=2, relu=relu)
        return ConvBN('c', x, 6, 3, strides=2, relu=relu)
    folded, values = run_layer(layer, inputs)
    with argscope([ConvBN, DepthConv, SELayer], fold_bn=False):
        unfolded, _ = run_layer(layer, inputs)
    bn = 'c/bn/' if relu else 'c/output/'
    kernel = values['c/W']
    conv = tf.nn.depthwise_conv2d if depthwise else tf.nn.conv2d
    expected = tf.nn.batch_normalization(
        conv(inputs, kernel, [1, 2, 2, 1], 'SAME'), values[bn + 'mean/EMA'], values[bn + 'variance/EMA'],
        values[bn + 'beta'], values[bn + 'gamma'], EPSILON).numpy()
    expected = np.maximum(expected, 0) if relu else expected
    np.testing.assert_allclose(unfolded, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(folded, expected, rtol=1e-4, atol=1e-4)
    types, fused = executed_op_types(layer, inputs)
    assert not [op for op in types if 'BatchNorm' in op]
    # a depthwise kernel takes the batch norm's scale; a conv runs it as its own output's scaling
    assert any('FusedBatchNorm' in ops for ops in fused) == (not depthwise)


@pytest.mark.parametrize('ratio', [2, 3, 4, 5])
@pytest.mark.parametrize('filters', [12, 13])
def test_strided_3x3_intrinsic_channels_are_a_plain_conv_with_batch_norm(filters, ratio):
    inputs = np.random.RandomState(4).normal(size=(2, 9, 9, 5)).astype(np.float32)
    intrinsic = math.ceil(filters / ratio)

    ghost_out, plain_out, values = ghost_and_plain(
        inputs, lambda x: GhostModule('g', x, filters, kernel_size=3, ratio=ratio, strides=2),
        lambda x: ConvBN('plain', x, intrinsic, 3, strides=2))
    assert ghost_out.shape == (2, 5, 5, filters)
    assert values['g/conv1/W'].shape == (3, 3, 5, intrinsic)
    assert values['g/dw1/DW'].shape == (3, 3, intrinsic, ratio - 1)
    np.testing.assert_allclose(ghost_out[..., :intrinsic], plain_out, rtol=1e-5, atol=1e-5)


def test_folded_and_unfolded_batch_norm_take_the_same_epsilon(monkeypatch):
    # an epsilon unlike tensorpack's default, and variances as small: a layer taking another epsilon shows
    monkeypatch.setattr(myconv2d, 'BN_EPSILON', 1e-3)
    inputs = np.random.RandomState(5).normal(size=(2, 6, 6, 5)).astype(np.float32)

    def layers(x):   # folded: a fused batch norm, a depthwise kernel, and kernels taking a Ghost output by parts
        return ConvBN('c', DepthConv('d', GhostModule('g', x, 12, ratio=2), 3, relu=True), 4, 1)
    folded, _ = run_layer(layers, inputs, variances=(1e-4, 1e-3))
    with argscope([ConvBN, DepthConv, SELayer], fold_bn=False):     # tensorpack's BatchNorm
        unfolded, _ = run_layer(layers, inputs, variances=(1e-4, 1e-3))
    np.testing.assert_allclose(folded, unfolded, rtol=1e-4, atol=1e-4 * np.abs(unfolded).max())


@pytest.mark.parametrize('data_format, axis, is_channel_concat', [
    ('NHWC', -1, True), ('NHWC', 3, True), ('NHWC', 2, False),
    ('NCHW', 1, True), ('NCHW', -3, True), ('NCHW', -1, False), ('NCHW', 3, False)])
def test_channel_parts_only_of_a_concatenation_along_the_channels(data_format, axis, is_channel_concat):
    with tf.Graph().as_default():
        parts = [tfv1.placeholder(tf.float32, [1, 4, 4, 4]) for _ in range(2)]
        x = tf.identity(tf.concat(parts, axis))
        assert channel_parts(x, data_format) == (parts if is_channel_concat else [x])


@pytest.mark.parametrize('layer', [ConvBN, DepthConv])
@pytest.mark.parametrize('is_training', [True, False])
def test_batch_norm_with_a_bias_is_refused(layer, is_training):
    with tf.Graph().as_default(), TowerContext('', is_training=is_training):
        x = tfv1.placeholder(tf.float32, [1, 4, 4, 3])
        with pytest.raises(ValueError, match=r'^c: bn=True and use_bias=True together'):
            layer('c', x, 3, bn=True, use_bias=True)
