"""ResNet-50 for ImageNet (stride on the 3x3 conv, projection shortcuts) and Ghost-ResNet-50.

Ghost-ResNet-50 keeps the 7x7 stem and replaces every other conv, projection shortcuts included; its
classifier is a 1x1 Ghost module with bias on the pooled features, as the paper's counts need.
"""
import collections

import compat  # noqa: F401  (must come before TensorFlow)
import tensorflow as tf
from tensorpack.models import MaxPooling

from myconv2d import ConvBN, GhostModule
from networks.plugin import PlugInNetwork

tfv1 = tf.compat.v1

Stage = collections.namedtuple('Stage', 'blocks width stride')
STAGES = [Stage(3, 64, 1), Stage(4, 128, 2), Stage(6, 256, 2), Stage(3, 512, 2)]
EXPANSION = 4        # a bottleneck outputs 4x its width
STEM_CHANNELS = 64   # 7x7 stride 2, then a 3x3 stride-2 max-pool


class ResNet50(PlugInNetwork):
    scope = 'ResNet50'
    image_shape = 224

    def bottleneck(self, name, x, width, stride):
        """1x1, 3x3 with the stride, 1x1 to 4x width; projection shortcut where the shape changes."""
        with tfv1.variable_scope(name):
            shortcut = x
            if stride != 1 or self.channels(x) != width * EXPANSION:
                shortcut = self.conv('convshortcut', x, width * EXPANSION, 1, strides=stride, relu=False)
            x = self.conv('conv1', x, width, 1)
            x = self.conv('conv2', x, width, 3, strides=stride)
            x = self.conv('conv3', x, width * EXPANSION, 1, relu=False)
            return tf.nn.relu(x + shortcut, name='output')

    def network(self, image):
        x = self.stem(image)
        for number, stage in enumerate(STAGES, start=1):
            for block in range(stage.blocks):
                x = self.bottleneck('group{}/block{}'.format(number, block), x, stage.width,
                                    stage.stride if block == 0 else 1)
        x = self.global_pool(x)
        with tfv1.variable_scope('Logits'):
            if self.ghost:
                return GhostModule('fc', x, self.num_classes, 1, dw_size=self.dw, ratio=self.ratio,
                                   bn=False, relu=False, use_bias=True)
            return self.classifier(x)

    def stem(self, image):
        """The 7x7 conv (never a Ghost module) and the max-pool: stride 4 in all."""
        x = ConvBN('conv0', image, STEM_CHANNELS, 7, strides=2)
        return MaxPooling('pool0', x, 3, strides=2, padding='SAME')
