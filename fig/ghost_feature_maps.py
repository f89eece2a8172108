#!/usr/bin/env python
"""Figure: a Ghost module's intrinsic feature maps beside the ghost maps its cheap operation made of them.

    python main.py --demo      # trains the default model into demo_data/train_log
    python fig/ghost_feature_maps.py --out fig/ghost_feature_maps.png
    python fig/ghost_feature_maps.py --load ./models/ghostnet_checkpoint --image cat.jpg

The tensorpack graph is built for inference at batch 1 and restored with imagenet_utils'
CheckedInit. The intrinsic maps are the primary conv's output (after its batch norm and, in
`_up_pointwise` modules, ReLU); the ghost maps are the depthwise op's (channel multiplier
ratio - 1), so ghost map j comes from intrinsic map j // (ratio - 1).
"""
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import compat  # noqa: E402,F401  (must come before TensorFlow)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from tensorpack.tfutils.tower import TowerContext  # noqa: E402
from tensorpack.utils import logger  # noqa: E402

from runtime.command_line import FlagParser  # noqa: E402
from deploy.export import checkpoint_num_classes  # noqa: E402
from ghostnet import GhostNet, add_model_arguments, check_model_arguments  # noqa: E402
from weights.checkpoint import CheckedInit, CheckpointError  # noqa: E402
from imagenet_utils import DataError, decode_image, eval_augmentor  # noqa: E402
from data.samples import DEMO_DEFAULTS, DEMO_DIR, sample_image  # noqa: E402

tfv1 = tf.compat.v1

DEMO_LOGDIR = os.path.join(DEMO_DIR, 'train_log')
SAMPLE_CLASS, SAMPLE_CLASSES = 3, 10   # the default image: a demo-like sample of this class
PAIRS_PER_ROW = 4

GhostTensors = collections.namedtuple('GhostTensors', 'intrinsic ghost kernel')


class UnknownLayer(Exception):
    """--layer names no Ghost module with a cheap operation."""


def ghost_module_names(graph):
    """Names (below the model scope) of the Ghost modules with a cheap operation in a built graph."""
    suffix = '/dw1/DW'
    return [v.op.name[len(GhostNet.scope) + 1:-len(suffix)]
            for v in graph.get_collection(tfv1.GraphKeys.GLOBAL_VARIABLES)
            if v.op.name.startswith(GhostNet.scope + '/') and v.op.name.endswith(suffix)]


def ghost_tensors(graph, layer):
    """Module `layer`'s intrinsic maps (`conv1/output`), ghost maps (`dw1`'s, as concatenated), DW kernel."""
    if layer not in ghost_module_names(graph):
        raise UnknownLayer('--layer {}: not a Ghost module with a cheap operation; choose from {}'.format(
            layer, ', '.join(ghost_module_names(graph))))
    scope = GhostNet.scope + '/' + layer
    concat = graph.get_tensor_by_name(scope + '/output:0').op
    while concat.type == 'Identity':
        concat = concat.inputs[0].op
    kernel, = [v for v in graph.get_collection(tfv1.GraphKeys.GLOBAL_VARIABLES)
               if v.op.name == scope + '/dw1/DW']
    return GhostTensors(concat.inputs[0], concat.inputs[1], kernel)


def ends_in_relu(tensor):
    """Whether `tensor` is a ReLU's output, looking through identities."""
    while tensor.op.type == 'Identity':
        tensor = tensor.op.inputs[0]
    return tensor.op.type == 'Relu'


def feature_maps(model, layer, image, session_init):
    """(intrinsic [H, W, C], ghost [H, W, G], kernel [k, k, C, ratio - 1], ReLU or not) for one BGR image."""
    with tf.Graph().as_default() as graph, TowerContext('', is_training=False):
        size = model.image_shape
        placeholder = tfv1.placeholder(tf.float32, [1, size, size, 3], 'input')
        model.get_logits(model.image_preprocess(placeholder))
        tensors = ghost_tensors(graph, layer)
        with tfv1.Session() as sess:
            session_init.init(sess)
            intrinsic, ghost, kernel = sess.run(tensors, {placeholder: image[np.newaxis].astype(np.float32)})
    return intrinsic[0], ghost[0], kernel, ends_in_relu(tensors.intrinsic)


def channel_pairs(ghost_channels, multiplier):
    """[(intrinsic channel, ghost channel)]: depthwise output j comes from input j // multiplier."""
    return [(j // multiplier, j) for j in range(ghost_channels)]


def chosen_pairs(intrinsic, pairs, count):
    """The `count` pairs whose intrinsic maps vary most over the image (flat maps show nothing)."""
    spread = intrinsic.reshape(-1, intrinsic.shape[-1]).std(axis=0)
    return sorted(pairs, key=lambda pair: -spread[pair[0]])[:count]


def load_image(path, image_size):
    """The evaluation crop of the image at `path`, or of a generated demo-like sample, as BGR uint8."""
    image = decode_image(path) if path else sample_image(
        np.random.default_rng(0), SAMPLE_CLASS, SAMPLE_CLASSES, image_size)
    return eval_augmentor(image_size).augment(image)


def show_map(ax, values, title, vmin, vmax):
    """One feature map, without ticks."""
    ax.imshow(values, cmap='viridis', vmin=vmin, vmax=vmax, interpolation='nearest')
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def plot(image, intrinsic, ghost, pairs, title, out):
    """The input image, then rows of (intrinsic, ghost) pairs; each pair on one colour scale."""
    rows = -(-len(pairs) // PAIRS_PER_ROW)
    figure = Figure(figsize=(1.6 * (1 + 2 * PAIRS_PER_ROW), 1.75 * rows + 0.9), layout='constrained')
    axes = figure.subplots(rows, 1 + 2 * PAIRS_PER_ROW, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    axes[0, 0].imshow(image[..., ::-1])
    axes[0, 0].set_title('input', fontsize=8)
    offset = intrinsic.shape[-1]
    for n, (i, j) in enumerate(pairs):
        row, column = divmod(n, PAIRS_PER_ROW)
        a, b = intrinsic[..., i], ghost[..., j]
        vmin, vmax = min(a.min(), b.min()), max(a.max(), b.max(), 1e-6)
        show_map(axes[row, 1 + 2 * column], a, 'intrinsic #{}'.format(i), vmin, vmax)
        show_map(axes[row, 2 + 2 * column], b, 'ghost #{} (of #{})'.format(offset + j, i), vmin, vmax)
    figure.suptitle(title, fontsize=9)
    figure.savefig(out, dpi=120)
    logger.info('Wrote {}'.format(out))


def describe(args, intrinsic, ghost, kernel, relu, shown):
    """The figure title: module, model, what the two kinds of maps are."""
    activation = 'BN + ReLU' if relu else 'BN'
    return ('Ghost module {} of GhostNet {}x ({}), {}x{} maps: {} intrinsic (1x1 conv + {}) and {} ghost '
            '({}x{} depthwise + {} on them)\n{} pairs, the most varied intrinsic maps first; each pair on '
            'one colour scale'.format(args.layer, args.width_ratio, args.load, intrinsic.shape[0],
                                      intrinsic.shape[1], intrinsic.shape[-1], activation, ghost.shape[-1],
                                      kernel.shape[0], kernel.shape[1], activation, shown))


def build_model(args):
    """GhostNet as the flags describe it, with the checkpoint's number of classes."""
    return GhostNet(checkpoint_num_classes(GhostNet, args.load), args.width_ratio, se=bool(args.se),
                    dw_code=args.dw_code, ratio_code=args.ratio_code, image_shape=args.image_size)


def parse_args(argv=None):
    parser = FlagParser(description=__doc__.split('\n')[0])
    parser.add_argument('--load', help='a checkpoint prefix, training log directory or .npz '
                                       '(default: the demo model, {})'.format(DEMO_LOGDIR))
    parser.add_argument('--image', help='an image file (default: a generated demo-like sample)')
    parser.add_argument('--image_size', type=int,
                        help='input crop (default: {} for the demo model, else 224)'.format(
                            DEMO_DEFAULTS['image_size']))
    parser.add_argument('--layer', default='Conv2d_2_up_pointwise',
                        help='the Ghost module, below MobileNetV2/ (default %(default)s)')
    parser.add_argument('--pairs', type=int, default=8, help='(intrinsic, ghost) pairs shown')
    add_model_arguments(parser)
    parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      'ghost_feature_maps.png'))
    args = parser.parse_args(argv)
    check_model_arguments(args, parser)
    if args.pairs < 1:
        parser.error('--pairs must be positive')
    if args.load is None and tf.train.latest_checkpoint(DEMO_LOGDIR) is None:
        parser.exit(1, 'error: no --load given and no demo model in {}: run `python main.py --demo` '
                       'first (it trains one in a minute or two) or pass --load CKPT\n'.format(DEMO_LOGDIR))
    args.image_size = args.image_size or (224 if args.load else DEMO_DEFAULTS['image_size'])
    args.load = args.load or DEMO_LOGDIR
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        image = load_image(args.image, args.image_size)
        intrinsic, ghost, kernel, relu = feature_maps(build_model(args), args.layer, image,
                                                      CheckedInit(args.load))
    except (CheckpointError, DataError, UnknownLayer) as e:
        sys.exit('error: {}'.format(e))
    pairs = chosen_pairs(intrinsic, channel_pairs(ghost.shape[-1], kernel.shape[-1]), args.pairs)
    plot(image, intrinsic, ghost, pairs, describe(args, intrinsic, ghost, kernel, relu, len(pairs)),
         args.out)


if __name__ == '__main__':
    main()
