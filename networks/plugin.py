"""The Ghost module as a plug-in: a network whose every conv + BN (+ ReLU) is a `ConvBN`, or a
`GhostModule` with ratio s and cheap kernel d in its ghost-* form, from one description."""
import compat  # noqa: F401  (must come before TensorFlow)
import tensorflow as tf
from tensorpack.models import MaxPooling
from tensorpack.tfutils.argscope import argscope

from data import cifar
from imagenet_utils import ImageNetModel
from myconv2d import ConvBN, DepthConv, GhostModule, channel_axis, spatial_axes

tfv1 = tf.compat.v1


class PlugInNetwork(ImageNetModel):
    """A classifier whose subclass builds `network(image)` from `self.conv`, under `scope`."""

    nesterov = False
    weight_decay_pattern = '/D?W$'   # every kernel, the cheap operations' included
    label_smoothing = 0.
    classifier_bias = 'Logits/fc/b'

    def __init__(self, num_classes, ghost=False, ratio=2, dw=3, weight_decay=1e-4, dropout_keep_prob=1.,
                 label_smoothing=0., data_format='NHWC', image_shape=None):
        if ratio < 1 or dw < 1:
            raise ValueError('the Ghost module needs ratio >= 1 and dw >= 1, got {} and {}'.format(ratio, dw))
        self.num_classes = num_classes
        self.ghost, self.ratio, self.dw = ghost, ratio, dw
        self.weight_decay = weight_decay
        self.dropout_keep_prob = dropout_keep_prob
        self.label_smoothing = label_smoothing
        self.data_format = data_format
        self.image_shape = image_shape or self.image_shape

    def checkpoint_flags(self, shapes):
        """{'--ratio': s, '--dw': d} of a checkpoint's {variable name: shape} when it has Ghost modules
        with cheap operations, else {}."""
        cheap_ops = [shape for name, shape in sorted(shapes.items())
                     if name.startswith(self.scope + '/') and name.endswith('/dw1/DW')]
        return {'--ratio': cheap_ops[0][3] + 1, '--dw': cheap_ops[0][0]} if cheap_ops else {}

    def conv(self, name, x, filters, kernel_size, strides=1, relu=True, **layer_args):
        """Conv + BN (+ ReLU), or the Ghost module that replaces it in the ghost-* network."""
        if self.ghost:
            return GhostModule(name, x, filters, kernel_size, dw_size=self.dw, ratio=self.ratio,
                               strides=strides, relu=relu, **layer_args)
        return ConvBN(name, x, filters, kernel_size, strides=strides, relu=relu, **layer_args)

    def classifier(self, x):
        """Logits of pooled [N, 1, 1, C] features: a 1x1 conv with bias, `Logits/fc`."""
        return ConvBN('fc', x, self.num_classes, 1, bn=False, relu=False, use_bias=True)

    def network(self, image):
        """[N, num_classes, 1, 1] or [N, 1, 1, num_classes] logits of a preprocessed image."""
        raise NotImplementedError()

    def channels(self, x):
        return int(x.shape[channel_axis(self.data_format)])

    def global_pool(self, x):
        return tf.reduce_mean(x, spatial_axes(self.data_format), keepdims=True, name='global_pool')

    def get_logits(self, image):
        with tfv1.variable_scope(self.scope), \
                argscope([ConvBN, DepthConv, GhostModule, MaxPooling], data_format=self.data_format):
            return tf.squeeze(self.network(image), spatial_axes(self.data_format))


class CifarNetwork(PlugInNetwork):
    """A plug-in network for CIFAR-10: 32x32, normalized per channel; an image file is resized whole."""

    image_shape = cifar.IMAGE_SIZE
    mean_rgb, std_rgb = cifar.MEAN_RGB, cifar.STD_RGB

    def file_augmentor(self):
        return cifar.file_augmentor(self.image_shape)
