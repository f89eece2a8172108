"""What the benchmarks compare: GhostNet at its widths and the Ghost family's PyTorch-form and V2 networks
(tensorpack graph, export.py's files) and tf.keras MobileNetV3 (a tf.compat.v1 graph, a SavedModel and ONNX with
export.py's serving signature)."""
import os

import compat  # noqa: F401  (must come before TensorFlow)
import tensorflow as tf
import tf2onnx
from tensorpack.tfutils.tower import TowerContext

from deploy import export
from networks import ARCHITECTURES

tfv1 = tf.compat.v1

NUM_CLASSES = 1000
# name -> (--arch, --width_ratio)
GHOST_MODELS = {'ghostnet-0.5': ('ghostnet', 0.5), 'ghostnet-1.0': ('ghostnet', 1.0), 'ghostnet-1.3': ('ghostnet', 1.3),
                'ghostnet-pytorch-1.0': ('ghostnet-pytorch', 1.0), 'ghostnetv2-1.0': ('ghostnetv2', 1.0)}
KERAS_MODELS = {'mobilenetv3-large': 'MobileNetV3Large', 'mobilenetv3-small': 'MobileNetV3Small'}
MODELS = tuple(GHOST_MODELS) + tuple(KERAS_MODELS)


class GhostNetSubject:
    """A network of the Ghost family at a width: the tensorpack graph, and export.py's folded SavedModel."""

    def __init__(self, name, image_size):
        self.name = name
        arch, width = GHOST_MODELS[name]
        self.model = ARCHITECTURES[arch].model(NUM_CLASSES, width, image_shape=image_size)

    def graph(self, training):
        """(session, image placeholder, label placeholder, train op or probabilities) in a fresh graph."""
        graph = tf.Graph()
        with graph.as_default():
            image, label = [tfv1.placeholder(spec.dtype, spec.shape, spec.name)
                            for spec in self.model.get_input_signature()]
            with TowerContext('', is_training=training):
                cost = self.model.build_graph(image, label)
            fetch = graph.get_tensor_by_name('prob:0')
            if training:
                fetch = minimize(self.model.get_optimizer(), cost)
            session = tfv1.Session(graph=graph)
            session.run(tfv1.global_variables_initializer())
        return session, image, label, fetch

    def saved_model(self, session, directory, int8=False):
        """Save the session's weights and export them with export.py; returns the SavedModel path.
        `int8` gives the one export.py quantizes to int8."""
        with session.graph.as_default():
            checkpoint = tfv1.train.Saver().save(session, os.path.join(directory, 'model'))
        save = export.export_int8_saved_model if int8 else export.export_saved_model
        return save(self.model, checkpoint, os.path.join(directory, 'saved_model'))

    def onnx(self, session, directory):
        """The session's weights as export.py's ONNX model; its path."""
        with session.graph.as_default():
            checkpoint = tfv1.train.Saver().save(session, os.path.join(directory, 'model'))
        return export.save_onnx(export.frozen_serving_graph(self.model, checkpoint),
                                os.path.join(directory, self.name + '.onnx'))


class KerasSubject:
    """A tf.keras.applications model with random weights, with its own [0, 255] RGB preprocessing."""

    def __init__(self, name, image_size):
        self.name = name
        self.image_size = image_size
        self.constructor = getattr(tf.keras.applications, KERAS_MODELS[name])

    def build(self):
        """A new Keras model that outputs logits."""
        return self.constructor(input_shape=(self.image_size, self.image_size, 3), weights=None,
                                classes=NUM_CLASSES, classifier_activation=None)

    def graph(self, training):
        """(session, image placeholder, label placeholder, fetch) in a fresh tf.compat.v1 graph."""
        graph = tf.Graph()
        with graph.as_default():
            network = self.build()
            image = tfv1.placeholder(tf.float32, [None, self.image_size, self.image_size, 3], 'input')
            label = tfv1.placeholder(tf.int32, [None], 'label')
            logits = network(image, training=training)
            fetch = tf.nn.softmax(logits)
            if training:
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(label, logits))
                with tf.control_dependencies(network.get_updates_for(image)):
                    fetch = tfv1.train.MomentumOptimizer(0.1, 0.9, use_nesterov=True).minimize(loss)
            session = tfv1.Session(graph=graph)
            session.run(tfv1.global_variables_initializer())
        return session, image, label, fetch

    def serving_module(self):
        """A tf.Module whose `serve` has export.py's serving signature (the weights are new random ones:
        those of `graph` live in a tf.compat.v1 graph, and fresh random ones time the same)."""
        module = tf.Module()
        module.network = self.build()
        module.serve = tf.function(lambda images: serving_outputs(module.network(
            tf.cast(images, tf.float32), training=False)), input_signature=[tf.TensorSpec(
                [None, self.image_size, self.image_size, 3], tf.uint8, name='images')])
        return module

    def saved_model(self, session, directory, int8=False):
        """The serving module as a SavedModel; its path (the converter folds its batch norm). int8 keeps
        the three outputs: its file's logits may be clipped (see export.py)."""
        del session, int8
        module, path = self.serving_module(), os.path.join(directory, 'saved_model')
        tf.saved_model.save(module, path, signatures={'serving_default': module.serve})
        return path

    def onnx(self, session, directory):
        """The serving module converted by tf2onnx as export.py converts GhostNet's; its path."""
        del session
        path = os.path.join(directory, self.name + '.onnx')
        serve = self.serving_module().serve
        tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=export.ONNX_OPSET,
                                      output_path=path)
        return path


def serving_outputs(logits):
    """The outputs of export.py's serving signature, from logits."""
    probabilities = tf.nn.softmax(logits)
    return {'probabilities': probabilities, 'top5': export.top_k_classes(logits, 5), 'logits': logits}


def minimize(optimizer, cost):
    """The training op: the optimizer's step after the batch-norm EMA updates, as tensorpack runs them."""
    with tf.control_dependencies(tfv1.get_collection(tfv1.GraphKeys.UPDATE_OPS)):
        return optimizer.minimize(cost)


def subject(name, image_size):
    """The benchmark subject for a model name."""
    if name in GHOST_MODELS:
        return GhostNetSubject(name, image_size)
    return KerasSubject(name, image_size)
