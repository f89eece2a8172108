"""ImageNet for tensorpack: the model base class (preprocessing, loss, errors)."""
import compat  # noqa: F401  (must come before TensorFlow)
import numpy as np
import tensorflow as tf
from tensorpack import ModelDesc
from tensorpack.models import regularize_cost
from tensorpack.tfutils.summary import add_moving_summary

tfv1 = tf.compat.v1

# ImageNet statistics in RGB order; the model sees BGR images, so they are applied reversed.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


class ImageNetModel(ModelDesc):
    """A classifier on BGR uint8-range images; subclasses define `get_logits`."""

    image_shape = 224
    data_format = 'NHWC'
    num_classes = 1000
    weight_decay = 4e-5
    weight_decay_pattern = '/W'   # kernels; not the cheap ops' `DW`, biases or batch norm
    label_smoothing = 0.1

    def inputs(self):
        return [tf.TensorSpec([None, self.image_shape, self.image_shape, 3], tf.float32, 'input'),
                tf.TensorSpec([None], tf.int32, 'label')]

    def build_graph(self, image, label):
        logits = tf.identity(self.get_logits(self.image_preprocess(image)), name='logits')
        tf.nn.softmax(logits, name='prob')
        loss = self.classification_loss(logits, label)
        self.classification_errors(logits, label)
        wd_cost = regularize_cost(self.weight_decay_pattern,
                                  lambda w: self.weight_decay * tf.nn.l2_loss(w), name='wd_cost')
        total_cost = tf.add_n([loss, wd_cost], name='cost')
        add_moving_summary(loss, wd_cost, total_cost)
        return total_cost

    def get_logits(self, image):
        """The network: a preprocessed image in `self.data_format` to [batch, num_classes] logits."""
        raise NotImplementedError()

    def image_preprocess(self, image):
        """[0, 255] BGR NHWC to normalized BGR in `self.data_format`."""
        with tf.name_scope('image_preprocess'):
            mean = tf.constant(IMAGENET_MEAN_RGB[::-1], tf.float32)
            std = tf.constant(IMAGENET_STD_RGB[::-1], tf.float32)
            image = (image * (1.0 / 255) - mean) / std
            if self.data_format in ('NCHW', 'channels_first'):
                image = tf.transpose(image, [0, 3, 1, 2])
            return image

    def classification_loss(self, logits, label):
        """Mean cross-entropy against labels smoothed by `self.label_smoothing`."""
        smoothed = (tf.one_hot(label, self.num_classes) * (1 - self.label_smoothing)
                    + self.label_smoothing / self.num_classes)
        loss = tf.nn.softmax_cross_entropy_with_logits(labels=smoothed, logits=logits)
        return tf.reduce_mean(loss, name='xentropy-loss')

    @staticmethod
    def classification_errors(logits, label):
        """Per-image `wrong-top1` and `wrong-top5` (1.0 where the label is not in the top k)."""
        for k in (1, 5):
            hit = tf.nn.in_top_k(targets=label, predictions=logits, k=k)
            wrong = tf.cast(tf.logical_not(hit), tf.float32, name='wrong-top{}'.format(k))
            add_moving_summary(tf.reduce_mean(wrong, name='train-error-top{}'.format(k)))

    def optimizer(self):
        lr = tfv1.get_variable('learning_rate', initializer=0.1, trainable=False)
        tfv1.summary.scalar('learning_rate-summary', lr)
        return tfv1.train.MomentumOptimizer(lr, 0.9, use_nesterov=True)
