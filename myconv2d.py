"""The layers every network here is made of: a conv + BN (+ ReLU) that folds its BN in inference, the
Ghost module (a primary conv plus a cheap depthwise op) that replaces it, and squeeze-and-excitation.

Training builds tensorpack's BatchNorm; an inference tower (evaluation, prediction, export) folds each
batch norm into the conv before it, from the same variables under the same names: into the kernel of a
depthwise conv or of a conv that takes a Ghost module's output by parts, and otherwise as an inference-mode
batch norm that grappler fuses into the conv op and converters fold into the kernel.
"""
import collections
import math

import compat  # noqa: F401  (must come before TensorFlow)
import numpy as np
import tensorflow as tf
from tensorpack.models import BatchNorm, layer_register
from tensorpack.models.batch_norm import get_bn_variables
from tensorpack.tfutils.tower import get_current_tower_context

tfv1 = tf.compat.v1

BN_EPSILON = 1e-5     # every batch norm's, in training and folded: the released model's (tensorpack's default)


def kernel_initializer():
    """The released model's initializer for every kernel: variance scaling 2.0 (He)."""
    return tfv1.variance_scaling_initializer(scale=2.0)


def is_nchw(data_format):
    return data_format in ('NCHW', 'channels_first')


def tf_format(data_format):
    """TensorFlow's name of `data_format`: 'NCHW' or 'NHWC'."""
    return 'NCHW' if is_nchw(data_format) else 'NHWC'


def channel_axis(data_format):
    return 1 if is_nchw(data_format) else 3


def spatial_axes(data_format):
    return [2, 3] if is_nchw(data_format) else [1, 2]


def folded_batch_norm(kernel, channels, depthwise):
    """(kernel * s, beta - mean * s) with s = gamma / sqrt(variance + eps), from the BN's variables.

    A depthwise kernel [k, k, in, mult] outputs channel `i * mult + m`: s is laid out as [in, mult].
    """
    beta, gamma, mean, variance = get_bn_variables(channels, True, True, tf.zeros_initializer(),
                                                   tf.ones_initializer())
    scale = gamma * tf.math.rsqrt(variance + BN_EPSILON)
    if depthwise:
        kernel = kernel * tf.reshape(scale, kernel.shape[2:])
    else:
        kernel = kernel * scale
    return kernel, beta - mean * scale


def convolve(x, kernel, strides, depthwise, data_format, padding='SAME'):
    """A conv or depthwise conv with TF `SAME` padding, or with `symmetric` padding: k // 2 zeros on every
    side, as PyTorch pads. At stride 1 (odd k) `SAME` pads so too: only a strided conv is padded apart, then
    run VALID."""
    if padding not in ('SAME', 'symmetric'):
        raise ValueError('padding must be SAME or symmetric, got {!r}'.format(padding))
    nchw = is_nchw(data_format)
    strides4 = [1, 1, strides, strides] if nchw else [1, strides, strides, 1]
    conv = tf.nn.depthwise_conv2d if depthwise else tf.nn.conv2d
    padded_apart = padding == 'symmetric' and strides > 1
    if padded_apart:
        x = symmetrically_padded(x, kernel.shape[:2], data_format)
    return conv(x, kernel, strides4, 'VALID' if padded_apart else 'SAME', data_format=tf_format(data_format))


def symmetrically_padded(x, kernel_size, data_format):
    """`x` with k // 2 zeros before and after each spatial axis, for a kernel of `kernel_size` (kh, kw)."""
    paddings = [[0, 0] for _ in range(4)]
    for axis, size in zip(spatial_axes(data_format), kernel_size):
        paddings[axis] = [int(size) // 2] * 2
    return tf.pad(x, paddings)


def channel_parts(x, data_format):
    """The inputs of `x` when it is a concatenation along the channels (a Ghost module's output), else [x]."""
    op = x.op
    while op.type == 'Identity':
        op = op.inputs[0].op
    if op.type != 'ConcatV2' or not is_channel_axis(tf.get_static_value(op.inputs[-1]), x.shape.rank, data_format):
        return [x]
    return list(op.inputs[:-1])


def is_channel_axis(axis, rank, data_format):
    """Whether `axis` (negative counting from the end, as tf.concat takes it) is the channel axis."""
    return axis is not None and rank is not None and axis % rank == channel_axis(data_format)


def part_sizes(parts, data_format):
    """The channels of each part of a concatenation."""
    return [int(part.shape[channel_axis(data_format)]) for part in parts]


def channel_slices(x, sizes, data_format):
    """`x` split along the channels into `sizes`, as slices: LiteRT's XNNPACK delegate runs slices, not the
    SPLIT_V op of `tf.split`, which would cut the network into partitions run one after another."""
    begins = [sum(sizes[:index]) for index in range(len(sizes))]
    if is_nchw(data_format):
        return [x[:, begin:begin + size] for begin, size in zip(begins, sizes)]
    return [x[..., begin:begin + size] for begin, size in zip(begins, sizes)]


def parts_taken(x, kernel, depthwise, data_format, by_parts):
    """The parts a conv takes apart when `x` is a channel concatenation (a Ghost module's output), else []:
    with `by_parts`, a depthwise conv runs on each part, and a conv sums its parts' convs when that moves
    less memory than the concatenation does (3 x out < 2 x in channels)."""
    parts = channel_parts(x, data_format) if by_parts else [x]
    per_part = depthwise and int(kernel.shape[3]) == 1
    summed = not depthwise and 3 * int(kernel.shape[3]) < 2 * int(kernel.shape[2])
    return parts if len(parts) > 1 and (per_part or summed) else []


def convolve_by_parts(x, parts, kernel, bias, strides, depthwise, relu, data_format, padding):
    """conv + bias (+ ReLU) as inference runs it, on `parts_taken` when there are any: the concatenation is
    then never computed."""
    tf_data_format = tf_format(data_format)
    activation = tf.nn.relu if relu else tf.identity
    if not parts:
        return activation(tf.nn.bias_add(convolve(x, kernel, strides, depthwise, data_format, padding), bias,
                                         data_format=tf_data_format), name='output')
    sizes = part_sizes(parts, data_format)
    kernels = tf.split(kernel, sizes, 2)
    if depthwise:
        outputs = [activation(tf.nn.bias_add(convolve(part, part_kernel, strides, True, data_format, padding),
                                             part_bias, data_format=tf_data_format))
                   for part, part_kernel, part_bias in zip(parts, kernels, tf.split(bias, sizes))]
        return tf.concat(outputs, channel_axis(data_format), name='output')
    convs = [convolve(part, part_kernel, strides, False, data_format, padding)
             for part, part_kernel in zip(parts, kernels)]
    x = tf.nn.bias_add(convs[0], bias, data_format=tf_data_format)   # the bias where converters fuse it
    for conv in convs[1:]:
        x = tf.add(x, conv)
    return activation(x, name='output')


def batch_normalized(conv, relu, channels, bn_name, data_format):
    """Batch norm in inference mode on a conv's output: grappler fuses it into the conv, which then scales
    its output, and converters fold it into the kernel, so that no kernel is rescaled at run time."""
    with tfv1.variable_scope(bn_name):
        beta, gamma, mean, variance = get_bn_variables(channels, True, True, tf.zeros_initializer(),
                                                       tf.ones_initializer())
    x, _, _ = tfv1.nn.fused_batch_norm(conv, gamma, beta, mean, variance, BN_EPSILON, is_training=False,
                                       data_format=tf_format(data_format))
    return tf.nn.relu(x, name='output') if relu else tf.identity(x, name='output')


def conv_bn_relu(x, kernel, strides, depthwise, bn, relu, use_bias, bn_name, data_format, fold_bn, by_parts,
                 padding):
    """The layer body: conv, then BN or a bias, then ReLU. In inference, BN is folded into a depthwise
    kernel or into a kernel that takes parts, and is one op with any other conv."""
    if bn and use_bias:
        raise ValueError('{}: bn=True and use_bias=True together: batch norm has its own offset (beta); '
                         'pass one of them'.format(tfv1.get_variable_scope().name))
    channels = int(kernel.shape[2] * kernel.shape[3]) if depthwise else int(kernel.shape[3])
    tf_data_format = tf_format(data_format)
    inference = fold_bn and not get_current_tower_context().is_training
    parts = parts_taken(x, kernel, depthwise, data_format, by_parts) if inference else []
    if bn and inference and not (depthwise or parts):
        return batch_normalized(convolve(x, kernel, strides, False, data_format, padding), relu, channels, bn_name,
                                data_format)
    if bn and inference:
        with tfv1.variable_scope(bn_name):
            kernel, bias = folded_batch_norm(kernel, channels, depthwise)
        return convolve_by_parts(x, parts, kernel, bias, strides, depthwise, relu, data_format, padding)
    if use_bias:
        bias = tfv1.get_variable('b', [channels], initializer=tf.zeros_initializer())
        if inference:
            return convolve_by_parts(x, parts, kernel, bias, strides, depthwise, relu, data_format, padding)
    x = convolve(x, kernel, strides, depthwise, data_format, padding)
    if use_bias:
        x = tf.nn.bias_add(x, bias, data_format=tf_data_format)
    elif bn:
        x = BatchNorm(bn_name, x, epsilon=BN_EPSILON,
                      data_format='channels_first' if is_nchw(data_format) else 'channels_last')
    return tf.nn.relu(x, name='output') if relu else tf.identity(x, name='output')


def kernel_shape(kernel_size, in_channels, out_channels):
    """[kh, kw, in, out] of a kernel of `kernel_size` (k or (kh, kw))."""
    size = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size, kernel_size)
    return [int(size[0]), int(size[1]), in_channels, out_channels]


@layer_register(log_shape=True)
def ConvBN(x, filters, kernel_size=1, strides=1, bn=True, relu=True, use_bias=False, data_format='NHWC',
           fold_bn=True, by_parts=True, padding='SAME', branches=1, reparameterize=True):
    """Conv `W` [k, k, in, filters], then BN under `bn/` (or a bias `b` with bn=False), then ReLU; `padding`
    'SAME' (TensorFlow's) or 'symmetric' (PyTorch's, see `convolve`). With `branches` > 1, GhostNetV3's
    training form: that many parallel conv + BN (see `branched_conv`)."""
    shape = kernel_shape(kernel_size, int(x.shape[channel_axis(data_format)]), filters)
    if branches > 1:
        return branched_conv(x, shape, strides, False, relu, data_format, fold_bn, by_parts, padding,
                             Branches(branches, False, False), reparameterize)
    kernel = tfv1.get_variable('W', shape, initializer=kernel_initializer())
    return conv_bn_relu(x, kernel, strides, False, bn, relu, use_bias, 'bn', data_format, fold_bn, by_parts,
                        padding)


@layer_register(log_shape=True)
def DepthConv(x, kernel_size, channel_multiplier=1, strides=1, bn=True, relu=False, use_bias=False,
              data_format='NHWC', kernel_name='W', fold_bn=True, by_parts=True, padding='SAME', branches=1,
              scale_branch=False, skip_branch=False, reparameterize=True):
    """Depthwise conv [k, k, in, multiplier] (`kernel_size` k or (kh, kw)), then BN (+ ReLU); `padding` as
    `ConvBN`'s. With `branches` > 1, `scale_branch` or `skip_branch`, GhostNetV3's training form (see
    `branched_conv`).

    The BN is under `bn/` with a ReLU and `output/` without, as in the released checkpoint
    (`dw1/output/...`, `_depthwise/output/...`).
    """
    shape = kernel_shape(kernel_size, int(x.shape[channel_axis(data_format)]), channel_multiplier)
    if branches > 1 or scale_branch or skip_branch:
        return branched_conv(x, shape, strides, True, relu, data_format, fold_bn, by_parts, padding,
                             Branches(branches, scale_branch, skip_branch), reparameterize, kernel_name)
    kernel = tfv1.get_variable(kernel_name, shape, initializer=kernel_initializer())
    return conv_bn_relu(x, kernel, strides, True, bn, relu, use_bias, 'bn' if relu else 'output',
                        data_format, fold_bn, by_parts, padding)


# ---------------------------------------------------------------- GhostNetV3's re-parameterizable branches

Branches = collections.namedtuple('Branches', 'convs scale skip')
REPARAMETERIZED = 'reparameterized'   # graph collection of the fused layers' (scope, kernel, bias), for counting
Reparameterized = collections.namedtuple('Reparameterized', 'scope kernel bias')


def branched_conv(x, shape, strides, depthwise, relu, data_format, fold_bn, by_parts, padding, branches,
                  reparameterize, kernel_name='W'):
    """GhostNetV3's conv: `branches.convs` parallel convs of `shape`, each with BN (`branch<i>/<kernel_name>`,
    `branch<i>/bn/`), a 1x1 conv + BN (`scale/`) and a BN of the input (`skip/bn/`) when asked, summed, then
    ReLU. Inference fuses them into one conv with a bias, as `reparameterize()` does in timm (the fused
    kernel is computed from the same variables); with `reparameterize=False` it runs the branches, their
    batch norms in inference mode."""
    if not get_current_tower_context().is_training and reparameterize:
        kernel, bias = fused_branches(shape, depthwise, branches, kernel_name)
        tfv1.add_to_collection(REPARAMETERIZED, Reparameterized(tfv1.get_variable_scope().name, kernel, bias))
        parts = parts_taken(x, kernel, depthwise, data_format, by_parts) if fold_bn else []
        return convolve_by_parts(x, parts, kernel, bias, strides, depthwise, relu, data_format, padding)
    bn_args = dict(epsilon=BN_EPSILON, data_format='channels_first' if is_nchw(data_format) else 'channels_last')
    outputs = []
    for name, branch_shape in branch_shapes(shape, branches):
        with tfv1.variable_scope(name):
            kernel = tfv1.get_variable(kernel_name, branch_shape, initializer=kernel_initializer())
            outputs.append(BatchNorm('bn', convolve(x, kernel, strides, depthwise, data_format, padding), **bn_args))
    if branches.skip:
        with tfv1.variable_scope('skip'):
            outputs.append(BatchNorm('bn', x, **bn_args))
    x = tf.add_n(outputs)
    return tf.nn.relu(x, name='output') if relu else tf.identity(x, name='output')


def branch_shapes(shape, branches):
    """(scope, kernel shape) of each conv branch: `branch<i>` of `shape`, then `scale` of 1x1."""
    convs = [('branch{}'.format(index), shape) for index in range(branches.convs)]
    return convs + ([('scale', [1, 1] + shape[2:])] if branches.scale else [])


def fused_branches(shape, depthwise, branches, kernel_name):
    """(kernel, bias) of the one conv that computes the branches' sum: each branch's BN folded into its
    kernel, the 1x1 kernel at the centre of a k x k one, the skip branch as an identity kernel."""
    channels = shape[2] * shape[3] if depthwise else shape[3]
    kernels, biases = [], []
    for name, branch_shape in branch_shapes(shape, branches):
        with tfv1.variable_scope(name):
            kernel = tfv1.get_variable(kernel_name, branch_shape, initializer=kernel_initializer())
            with tfv1.variable_scope('bn'):
                kernel, bias = folded_batch_norm(kernel, channels, depthwise)
        kernels.append(centred(kernel, shape))
        biases.append(bias)
    if branches.skip:
        with tfv1.variable_scope('skip/bn'):
            kernel, bias = folded_batch_norm(identity_kernel(shape, depthwise), channels, depthwise)
        kernels.append(kernel)
        biases.append(bias)
    return summed(kernels), summed(biases)


def summed(tensors):
    """The sum of `tensors` as additions (converters fold ADD of constants, not ADD_N)."""
    total = tensors[0]
    for tensor in tensors[1:]:
        total = total + tensor
    return total


def centred(kernel, shape):
    """A 1 x 1 `kernel` at the centre of one of `shape`'s height and width (a product with a constant mask,
    which converters fold, where they leave a PAD of constants in the file)."""
    if list(kernel.shape[:2]) == list(shape[:2]):
        return kernel
    mask = np.zeros(shape[:2] + [1, 1], np.float32)
    mask[shape[0] // 2, shape[1] // 2] = 1.
    return kernel * mask


def identity_kernel(shape, depthwise):
    """The kernel of `shape` whose conv is its input: 1 at the centre tap from each channel to itself."""
    if (shape[3] != 1) if depthwise else (shape[2] != shape[3]):
        raise ValueError('{}: a skip branch needs as many outputs as inputs, got kernel shape {}'.format(
            tfv1.get_variable_scope().name, shape))
    identity = np.zeros(shape, np.float32)
    centre_height, centre_width = shape[0] // 2, shape[1] // 2
    if depthwise:
        identity[centre_height, centre_width] = 1.
    else:
        identity[centre_height, centre_width] = np.eye(shape[2], dtype=np.float32)
    return tf.constant(identity)


@layer_register(log_shape=True)
def GhostModule(x, filters, kernel_size=1, dw_size=3, ratio=2, strides=1, bn=True, relu=True,
                use_bias=False, data_format='NHWC', attention=False, branches=1):
    """`ceil(filters / ratio)` intrinsic maps from a conv, the rest from a cheap depthwise op on them.

    Variables: `conv1/W`, `conv1/bn/*` and `dw1/DW`, `dw1/{bn,output}/*` (with/without ReLU).
    `ratio == 1` is the primary conv alone. With `use_bias` (and no BN, as a classifier) the module
    has one bias `b` per output channel, as the conv it replaces. With `attention`, GhostNetV2's DFC
    attention (`dfc_attention`, under `dfc/`) gates the output. With `branches` > 1, GhostNetV3's training
    form: the primary conv is that many parallel conv + BN, the cheap op as many depthwise conv + BN plus
    a 1x1 scale branch and a BN skip branch (`branched_conv`; fused in inference).
    """
    init_channels = math.ceil(filters / ratio)
    layer_args = dict(bn=bn, relu=relu and not use_bias, data_format=data_format)
    inputs = x
    x = ConvBN('conv1', x, init_channels, kernel_size, strides=strides, branches=branches, **layer_args)
    axis = channel_axis(data_format)
    if ratio > 1:
        reparameterizable = dict(branches=branches, scale_branch=branches > 1, skip_branch=branches > 1)
        cheap = DepthConv('dw1', x, dw_size, channel_multiplier=ratio - 1, kernel_name='DW', **reparameterizable,
                          **layer_args)
        if int(cheap.shape[axis]) > filters - init_channels:
            cheap = channel_slices(cheap, [filters - init_channels], data_format)[0]
        x = tf.concat([x, cheap], axis)
    if use_bias:
        bias = tfv1.get_variable('b', [filters], initializer=tf.zeros_initializer())
        x = tf.nn.bias_add(x, bias, data_format=tf_format(data_format))
        x = tf.nn.relu(x) if relu else x
    if attention:
        with tfv1.variable_scope('dfc'):
            x = gated_by_nearest(x, dfc_attention(inputs, filters, kernel_size, strides, data_format), data_format)
    return tf.identity(x, name='output')


def dfc_attention(x, filters, kernel_size, strides, data_format):
    """GhostNetV2's decoupled fully connected attention on a Ghost module's input `x`: 2x2 average pooling,
    a conv + BN (`conv`), depthwise (1, 5) + BN (`horizontal`) and (5, 1) + BN (`vertical`) and a sigmoid: a
    gate at half the module's output size (see `gated_by_nearest`)."""
    spatial = spatial_axes(data_format)
    if min(int(x.shape[axis]) for axis in spatial) < 2:
        raise ValueError('{}: DFC attention pools 2x2 and its input is {}: use larger images'.format(
            tfv1.get_variable_scope().name, 'x'.join(str(x.shape[axis]) for axis in spatial)))
    x = tf.nn.avg_pool2d(x, 2, 2, 'VALID', data_format=tf_format(data_format))
    layer_args = dict(relu=False, data_format=data_format)
    x = ConvBN('conv', x, filters, kernel_size, strides=strides, **layer_args)
    x = DepthConv('horizontal', x, (1, 5), **layer_args)
    x = DepthConv('vertical', x, (5, 1), **layer_args)
    return tf.sigmoid(x)


def gated_by_nearest(x, gate, data_format):
    """`x` times `gate` upsampled to its size as PyTorch's nearest interpolation does, part by part where `x`
    is a Ghost module's concatenation: the output is then a concatenation of gated parts, which the layers
    after it take apart in inference (`convolve_by_parts`), as they take an ungated module's. Where `x`'s
    height and width are even (every stage's but the last's at 224), the gate is not upsampled but broadcast
    over row and column pairs (`pairs_gated`)."""
    parts = channel_parts(x, data_format)
    height, width = (int(x.shape[axis]) for axis in spatial_axes(data_format))
    upsampled = is_nchw(data_format) or height % 2 or width % 2
    if upsampled:
        gate = nearest_upsampled(gate, [height, width], data_format)
    else:
        gate = tf.reshape(gate, [-1, 1, width // 2, 1, int(gate.shape[3])])
    gates = channel_slices(gate, part_sizes(parts, data_format), data_format) if len(parts) > 1 else [gate]
    gated = [part * part_gate if upsampled else pairs_gated(part, part_gate) for part, part_gate in zip(parts, gates)]
    return gated[0] if len(gated) == 1 else tf.concat(gated, channel_axis(data_format), name='gated')


def pairs_gated(x, gate):
    """NHWC `x` [N, H, W, C] seen as [N * H/2, 2, W/2, 2, C] (row pairs, column pairs) times `gate`
    [N * H/2, 1, W/2, 1, C], broadcast over both pairs: no copy of the gate at `x`'s size."""
    _, height, width, channels = x.shape.as_list()
    pairs = tf.reshape(x, [-1, 2, width // 2, 2, channels])
    return tf.reshape(pairs * gate, [-1, height, width, channels])


def nearest_upsampled(x, size, data_format):
    """PyTorch's nearest interpolation of `x` ([h, w] = floor(`size` / 2)) to `size`: each row and column
    twice, and the first once more in front along an odd axis (source index floor(i * h / H)). Written as
    depth-to-space and slices, which LiteRT's XNNPACK delegate runs (it has no nearest resize)."""
    nhwc = tf.transpose(x, [0, 2, 3, 1]) if is_nchw(data_format) else x
    doubled = tf.nn.depth_to_space(tf.concat([nhwc] * 4, 3), 2)
    for axis, target in zip((1, 2), size):
        if target % 2:
            first = doubled[:, :1] if axis == 1 else doubled[:, :, :1]   # a strided slice, which XNNPACK runs
            doubled = tf.concat([first, doubled], axis)
    return tf.transpose(doubled, [0, 3, 1, 2]) if is_nchw(data_format) else doubled


def se_gate(x, gate):
    """The gate of squeeze-and-excitation: the released `clip(x, 0, 1)` or PyTorch's hard sigmoid
    `relu6(x + 3) / 6`. The clip is written `relu6(6 x) / 6`, the same function: int8 keeps a clip's output
    on its input's scale (TFLite's MINIMUM and MAXIMUM take one scale for inputs and output), and an SE
    layer's pre-gate values span hundreds, which would leave the gate a handful of levels; RELU6 is fused
    into fc2, whose int8 output then spans [0, 6]."""
    if gate == 'clip':
        return tf.nn.relu6(6. * x) / 6.
    if gate == 'hard_sigmoid':
        return tf.nn.relu6(x + 3.) * (1. / 6.)
    raise ValueError('gate must be clip or hard_sigmoid, got {!r}'.format(gate))


@layer_register(log_shape=True)
def SELayer(x, reduction=4, reduced_channels=None, gate='clip', data_format='NHWC', fold_bn=True, by_parts=True):
    """Squeeze-and-excitation to `reduced_channels` (default: the released `int(channels / reduction)`), with
    `se_gate`; in inference `by_parts`, on a Ghost module's output, each part is gated apart (see
    `convolve_by_parts`)."""
    channels = int(x.shape[channel_axis(data_format)])
    inference_by_parts = by_parts and fold_bn and not get_current_tower_context().is_training
    parts = channel_parts(x, data_format) if inference_by_parts else [x]
    axis = channel_axis(data_format)
    means = [tf.reduce_mean(part, spatial_axes(data_format), keepdims=True) for part in parts]
    squeezed = means[0] if len(parts) == 1 else tf.concat(means, axis)
    # the squeezed means are too small for their concatenation to cost what taking them apart would
    fc_args = dict(bn=False, use_bias=True, data_format=data_format, fold_bn=fold_bn, by_parts=False)
    hidden = ConvBN('fc1', squeezed, reduced_channels or int(channels / reduction), relu=True, **fc_args)
    gate = se_gate(ConvBN('fc2', hidden, channels, relu=False, **fc_args), gate)
    if len(parts) == 1:
        return tf.multiply(x, gate, name='output')
    gates = channel_slices(gate, part_sizes(parts, data_format), data_format)
    return tf.concat([part * part_gate for part, part_gate in zip(parts, gates)], axis, name='output')
