"""ResNet-56 for CIFAR-10 (He et al. 2016, section 4.2) and Ghost-ResNet-56 (every conv but the first)."""
import collections

import compat  # noqa: F401  (must come before TensorFlow)
import tensorflow as tf

from myconv2d import ConvBN, is_nchw
from networks.plugin import CifarNetwork

tfv1 = tf.compat.v1

Stage = collections.namedtuple('Stage', 'blocks channels stride')
STAGES = [Stage(9, 16, 1), Stage(9, 32, 2), Stage(9, 64, 2)]   # at 32x32, 16x16, 8x8
STEM_CHANNELS = 16


class ResNet56(CifarNetwork):
    scope = 'ResNet56'

    def shortcut(self, x, channels, stride):
        """Option A: the identity, subsampled and zero-padded to `channels` where the shape changes."""
        pad = channels - self.channels(x)
        if stride == 1 and not pad:
            return x
        if is_nchw(self.data_format):
            x = x[:, :, ::stride, ::stride]
            return tf.pad(x, [[0, 0], [pad // 2, pad - pad // 2], [0, 0], [0, 0]])
        x = x[:, ::stride, ::stride, :]
        return tf.pad(x, [[0, 0], [0, 0], [0, 0], [pad // 2, pad - pad // 2]])

    def basic_block(self, name, x, channels, stride):
        """Two 3x3 convs and the shortcut, then ReLU."""
        with tfv1.variable_scope(name):
            shortcut = self.shortcut(x, channels, stride)
            x = self.conv('conv1', x, channels, 3, strides=stride)
            x = self.conv('conv2', x, channels, 3, relu=False)
            return tf.nn.relu(x + shortcut, name='output')

    def network(self, image):
        x = ConvBN('conv0', image, STEM_CHANNELS, 3)     # never a Ghost module
        for number, stage in enumerate(STAGES, start=1):
            for block in range(stage.blocks):
                x = self.basic_block('group{}/block{}'.format(number, block), x, stage.channels,
                                     stage.stride if block == 0 else 1)
        with tfv1.variable_scope('Logits'):
            return self.classifier(self.global_pool(x))
