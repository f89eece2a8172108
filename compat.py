"""Runs tensorpack 0.11 on TensorFlow 2; every entry point imports this before TensorFlow.

tensorpack builds on `tf.layers`, which Keras 3 removed: TensorFlow must pick tf-keras, and it
reads TF_USE_LEGACY_KERAS only when it is first imported.
"""
import os

os.environ['TF_USE_LEGACY_KERAS'] = '1'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

import tensorflow as tf  # noqa: E402

# tensorpack's Horovod trainer, distributed graph builder and multi-tower predictor still call
# TF1 names on the top-level module; TensorFlow 2 keeps them only under tf.compat.v1.
for _name in ('global_variables', 'local_variables', 'variables_initializer',
              'variable_scope', 'get_variable_scope'):
    if not hasattr(tf, _name):
        setattr(tf, _name, getattr(tf.compat.v1, _name))

# Tensors and variables compare and hash by identity, as in TensorFlow 1 (the graphs here are TF1 graphs;
# no code compares tensors with `==`). Under TensorFlow 2's equality every variable hash walks the context
# stack, and tf-keras' legacy layers (tensorpack's BatchNorm) hash every global variable for each weight
# they add: building a network with hundreds of batch norms (GhostNetV3's training form) took twice as long.
tf.compat.v1.disable_tensor_equality()
