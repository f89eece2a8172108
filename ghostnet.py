"""GhostNet (Han et al., CVPR 2020) built from Ghost modules, named as the released checkpoint."""
import collections
import contextlib

import compat  # noqa: F401  (must come before TensorFlow)
import tensorflow as tf
from tensorpack.models import Dropout
from tensorpack.tfutils.argscope import argscope

from imagenet_utils import ImageNetModel
from myconv2d import ConvBN, DepthConv, GhostModule, SELayer, spatial_axes

tfv1 = tf.compat.v1

Bottleneck = collections.namedtuple('Bottleneck', 'kernel stride out expansion se')

# Blocks Conv2d_1 .. Conv2d_16. `expansion` is the hidden width over the previous block's
# nominal output width, as the released code gave it.
BOTTLENECKS = [
    Bottleneck(3, 1, 16, 1, False),
    Bottleneck(3, 2, 24, 3, False),
    Bottleneck(3, 1, 24, 3, False),
    Bottleneck(5, 2, 40, 3, True),
    Bottleneck(5, 1, 40, 3, True),
    Bottleneck(3, 2, 80, 6, False),
    Bottleneck(3, 1, 80, 2.5, False),
    Bottleneck(3, 1, 80, 2.3, False),
    Bottleneck(3, 1, 80, 2.3, False),
    Bottleneck(3, 1, 112, 6, True),
    Bottleneck(3, 1, 112, 6, True),
    Bottleneck(5, 2, 160, 6, True),
    Bottleneck(5, 1, 160, 6, False),
    Bottleneck(5, 1, 160, 6, True),
    Bottleneck(5, 1, 160, 6, False),
    Bottleneck(5, 1, 160, 6, True),
]
STEM_CHANNELS = 16     # Conv2d_0: 3x3 stride 2
LAST_CHANNELS = 960    # Conv2d_17: 1x1, then global average pooling
HEAD_CHANNELS = 1280   # Conv2d_18: 1x1 on the pooled features, never scaled by the width
FPN_BLOCKS = ('Conv2d_3', 'Conv2d_5', 'Conv2d_11', 'Conv2d_16')  # strides 4, 8, 16, 32


def scaled_channels(channels, width):
    """The released `depth()`: scale by the width, at least 8, rounded to a multiple of 4."""
    return round(max(int(channels * width), 8) / 4) * 4


def bottleneck_plan(scale):
    """(index, spec, nominal input channels, hidden channels, output channels) of Conv2d_1 .. Conv2d_16, the
    nominal widths (at 1.0x) scaled by `scale(channels)`."""
    plan, nominal = [], STEM_CHANNELS
    for index, spec in enumerate(BOTTLENECKS, start=1):
        plan.append((index, spec, nominal, scale(spec.expansion * nominal), scale(spec.out)))
        nominal = spec.out
    return plan


def parse_code(text, name):
    """A CLI code string such as '3,3,...' (16 ints, one per bottleneck) as a list of ints."""
    try:
        code = [int(v) for v in text.split(',')]
    except ValueError:
        raise ValueError('{}: expected {} comma-separated integers, got {!r}'.format(
            name, len(BOTTLENECKS), text)) from None
    if len(code) != len(BOTTLENECKS) or min(code) < 1:
        raise ValueError('{}: expected {} positive integers (one per bottleneck), got {!r}'.format(
            name, len(BOTTLENECKS), text))
    return code


def add_model_arguments(parser):
    """The released CLI's model flags: --width_ratio, --se, --dw_code_str, --ratio_code_str."""
    parser.add_argument('--width_ratio', type=float, default=1.0, help='width multiplier (0.5, 1.0, 1.3)')
    parser.add_argument('--se', type=int, choices=[0, 1], default=1,
                        help='squeeze-and-excitation in the bottlenecks that have it (1) or none (0)')
    parser.add_argument('--dw_code_str', default='',
                        help='16 comma-separated kernel sizes d of the cheap operations, one per '
                             'bottleneck (default: all 3)')
    parser.add_argument('--ratio_code_str', default='',
                        help='16 comma-separated ratios s of the Ghost modules, one per bottleneck '
                             '(default: all 2)')


def check_model_arguments(args, parser):
    """Sets `args.dw_code` and `args.ratio_code` from their strings; a usage error for bad values."""
    if args.width_ratio <= 0:
        parser.error('--width_ratio must be positive')
    try:
        args.dw_code = parse_code(args.dw_code_str, '--dw_code_str') if args.dw_code_str else None
        args.ratio_code = parse_code(args.ratio_code_str, '--ratio_code_str') if args.ratio_code_str else None
    except ValueError as e:
        parser.error(str(e))


class GhostNet(ImageNetModel):
    """GhostNet on ImageNetModel; variables live under `MobileNetV2/` as in the released checkpoint.

    The class attributes and `channels`, `se_options` are what another form of the same network changes.
    """

    scope = 'MobileNetV2'
    classifier_bias = 'Logits/Conv2d_1c_1x1/b'
    padding = 'SAME'        # of every conv (myconv2d.convolve)
    head_bn = True          # Conv2d_18: BN and no bias (else a bias and no BN)
    attention_from = None   # the first bottleneck whose up Ghost module has DFC attention (GhostNetV2), if any
    branches = 1            # parallel conv + BN of the Ghost modules and stride-2 depthwise convs (GhostNetV3)

    def __init__(self, num_classes=1000, width=1.0, se=True, dw_code=None, ratio_code=None,
                 weight_decay=4e-5, dropout_keep_prob=0.8, label_smoothing=0.1,
                 data_format='NHWC', image_shape=224):
        if width <= 0:
            raise ValueError('width must be positive, got {}'.format(width))
        self.num_classes = num_classes
        self.width = width
        self.se = se
        self.dw_code = list(dw_code or [3] * len(BOTTLENECKS))
        self.ratio_code = list(ratio_code or [2] * len(BOTTLENECKS))
        for name, code in (('dw_code', self.dw_code), ('ratio_code', self.ratio_code)):
            if len(code) != len(BOTTLENECKS):
                raise ValueError('{} needs {} entries, got {}'.format(name, len(BOTTLENECKS), len(code)))
        self.weight_decay = weight_decay
        self.dropout_keep_prob = dropout_keep_prob
        self.label_smoothing = label_smoothing
        self.data_format = data_format
        self.image_shape = image_shape
        self.end_points = {}

    def checkpoint_flags(self, shapes):
        """{flag: value} of the flags that shape GhostNet, as a checkpoint's {variable name: shape} shows
        them ({} for a checkpoint of another network). A bottleneck without a cheap operation has ratio 1
        and no kernel size (-)."""
        names = {name[len(self.scope) + 1:]: shape for name, shape in shapes.items()
                 if name.startswith(self.scope + '/')}
        if 'Conv2d_17/W' not in names:
            return {}
        cheap_ops = [names.get('Conv2d_{}_up_pointwise/dw1/DW'.format(index))
                     for index in range(1, len(BOTTLENECKS) + 1)]
        return {'--width_ratio': round(names['Conv2d_17/W'][3] / LAST_CHANNELS, 2),
                '--se': int(any('_se/' in name for name in names)),
                '--ratio_code_str': ','.join(str(op[3] + 1) if op else '1' for op in cheap_ops),
                '--dw_code_str': ','.join(str(op[0]) if op else '-' for op in cheap_ops)}

    def bottleneck(self, index, spec, in_channels, hidden, out, x):
        """Ghost bottleneck `Conv2d_<index>`: up Ghost module, [stride-2 depthwise], [SE], down Ghost module."""
        name = 'Conv2d_{}'.format(index)
        ghost_args = dict(dw_size=self.dw_code[index - 1], ratio=self.ratio_code[index - 1], branches=self.branches)
        if spec.stride == 1 and in_channels == spec.out:
            shortcut = x
        else:
            shortcut = DepthConv(name + '_shortcut_dw', x, spec.kernel, strides=spec.stride)
            shortcut = ConvBN(name + '_shortcut_1x1', shortcut, out, 1, relu=False)
        attention = self.attention_from is not None and index >= self.attention_from
        x = GhostModule(name + '_up_pointwise', x, hidden, attention=attention, **ghost_args)
        if spec.stride == 2:
            x = DepthConv(name + '_depthwise', x, spec.kernel, strides=2, branches=self.branches,
                          scale_branch=self.branches > 1)
        if self.se and spec.se:
            x = SELayer(name + '_se', x, **self.se_options(hidden))
        x = GhostModule(name + '_down_pointwise', x, out, relu=False, **ghost_args)
        return tf.add(x, shortcut, name=name)

    def channels(self, nominal):
        """A nominal width (the table's, at 1.0x) at this network's width."""
        return scaled_channels(nominal, self.width)

    def se_options(self, channels):
        """SELayer's options on `channels`: the released reduction (int(channels / 4)) and gate."""
        return {}

    def backbone(self, image):
        """Blocks Conv2d_0 .. Conv2d_16 on a preprocessed image; returns {block name: output}."""
        end_points = {}
        x = ConvBN('Conv2d_0', image, self.channels(STEM_CHANNELS), 3, strides=2)
        end_points['Conv2d_0'] = x
        for plan in bottleneck_plan(self.channels):
            x = self.bottleneck(*plan, x)
            end_points['Conv2d_{}'.format(plan[0])] = x
        return end_points

    def head(self, x, end_points):
        """Conv2d_17, global average pooling, Conv2d_18, dropout and the classifier."""
        x = ConvBN('Conv2d_17', x, self.channels(LAST_CHANNELS), 1)
        end_points['Conv2d_17'] = x
        x = tf.reduce_mean(x, spatial_axes(self.data_format), keepdims=True, name='global_pool')
        end_points['global_pool'] = x
        x = ConvBN('Conv2d_18', x, HEAD_CHANNELS, 1, bn=self.head_bn, use_bias=not self.head_bn)
        end_points['Conv2d_18'] = x
        with tfv1.variable_scope('Logits'):
            x = Dropout('Dropout', x, rate=1 - self.dropout_keep_prob)
            x = ConvBN('Conv2d_1c_1x1', x, self.num_classes, 1, bn=False, relu=False, use_bias=True)
        end_points['Logits'] = tf.squeeze(x, spatial_axes(self.data_format))
        return end_points['Logits']

    @contextlib.contextmanager
    def layer_defaults(self):
        """The data format in every layer, the padding of every conv."""
        with argscope([ConvBN, DepthConv, GhostModule, SELayer], data_format=self.data_format), \
                argscope([ConvBN, DepthConv], padding=self.padding):
            yield

    def get_logits(self, image):
        with tfv1.variable_scope(self.scope), self.layer_defaults():
            self.end_points = self.backbone(image)
            return self.head(self.end_points['Conv2d_16'], self.end_points)
