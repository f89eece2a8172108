"""Parameters and multiply-adds per layer of a built graph, one multiply-add counted once (as the paper)."""
import collections

import compat  # noqa: F401  (must come before TensorFlow)
import numpy as np
import tensorflow as tf
from tensorpack.tfutils.argscope import argscope
from tensorpack.tfutils.tower import TowerContext

from myconv2d import REPARAMETERIZED, ConvBN, DepthConv, SELayer

tfv1 = tf.compat.v1

LayerCost = collections.namedtuple('LayerCost', 'name op output_shape params multiply_adds')

# Ops that multiply-add: for each output element, one per kernel tap over the input channels
# it sees (all of them for a conv, one for a depthwise conv).
COUNTED_OPS = ('Conv2D', 'DepthwiseConv2dNative', 'MatMul')


def inference_graph(model):
    """`model`'s network on one image of its input size, in a new graph, for counting: batch norm kept
    apart, so that every layer is one conv op of its own scope (the folded form splits some)."""
    with tf.Graph().as_default() as graph, TowerContext('', is_training=False), \
            argscope([ConvBN, DepthConv, SELayer], fold_bn=False):
        size = model.image_shape
        model.get_logits(model.image_preprocess(tfv1.placeholder(tf.float32, [1, size, size, 3], 'input')))
    return graph


def multiply_adds(op):
    """Multiply-adds of one conv, depthwise conv or matmul op with static shapes."""
    out_elements = int(np.prod(op.outputs[0].shape.as_list()))
    kernel = op.inputs[1].shape.as_list()
    if op.type == 'Conv2D':
        return out_elements * kernel[0] * kernel[1] * kernel[2]
    if op.type == 'DepthwiseConv2dNative':
        return out_elements * kernel[0] * kernel[1]
    return out_elements * kernel[0]


def layer_table(graph):
    """One LayerCost per counted op; a layer's params are the trainable variables in the op's scope, or the
    kernel and bias that inference fuses its branches into (GhostNetV3)."""
    trainable, fused = unfused_variables(graph), fused_parameters(graph)
    rows = []
    for op in graph.get_operations():
        if op.type not in COUNTED_OPS:
            continue
        scope = op.name.rsplit('/', 1)[0]
        params = fused.get(scope, sum(size(v) for v in trainable if v.op.name.startswith(scope + '/')))
        rows.append(LayerCost(scope, op.type, op.outputs[0].shape.as_list(), params, multiply_adds(op)))
    return rows


def size(tensor):
    return int(np.prod(tensor.shape.as_list()))


def fused_parameters(graph):
    """{layer scope: values of its fused kernel and bias} of the layers whose branches inference fuses."""
    return {entry.scope: size(entry.kernel) + size(entry.bias) for entry in graph.get_collection(REPARAMETERIZED)}


def unfused_variables(graph):
    """The trainable variables but those of branches that inference fuses: the parameters of the network
    that runs (timm's count after `reparameterize_model`)."""
    fused = tuple(scope + '/' for scope in fused_parameters(graph))
    return [v for v in graph.get_collection(tfv1.GraphKeys.TRAINABLE_VARIABLES) if not v.op.name.startswith(fused)]


def total_params(graph):
    return sum(size(v) for v in unfused_variables(graph)) + sum(fused_parameters(graph).values())


def total_multiply_adds(graph):
    return sum(row.multiply_adds for row in layer_table(graph))


def profiler_flops(graph):
    """TensorFlow's profiler count of float operations (it counts a multiply-add as two)."""
    options = tfv1.profiler.ProfileOptionBuilder.float_operation()
    options['output'] = 'none'
    return tfv1.profiler.profile(graph, options=options).total_float_ops
