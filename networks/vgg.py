"""VGG-16 for CIFAR-10 (the pruning literature's, as Ghost-VGG-16 in the paper) and Ghost-VGG-16."""
import compat  # noqa: F401  (must come before TensorFlow)
import tensorflow as tf
from tensorpack.models import Dropout, MaxPooling

from myconv2d import ConvBN
from networks.plugin import CifarNetwork

tfv1 = tf.compat.v1

POOL = 'M'
# 13 convolutions 3x3 + BN + ReLU (all of them Ghost modules in Ghost-VGG-16), 2x2 max-pools between
LAYERS = [64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL]
HIDDEN = 512   # the classifier: FC 512->512 + BN + ReLU, FC 512->classes, dropout before each in training


class VGG16(CifarNetwork):
    scope = 'VGG16'

    def network(self, image):
        x, convs = image, 0
        for layer in LAYERS:
            if layer == POOL:
                x = MaxPooling('pool{}'.format(convs), x, 2)
            else:
                convs += 1
                x = self.conv('conv{}'.format(convs), x, layer, 3)
        with tfv1.variable_scope('Logits'):
            x = Dropout('dropout1', x, rate=1 - self.dropout_keep_prob)
            x = ConvBN('hidden', x, HIDDEN, 1)     # not replaced by a Ghost module
            x = Dropout('dropout2', x, rate=1 - self.dropout_keep_prob)
            return self.classifier(x)

