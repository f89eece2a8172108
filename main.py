#!/usr/bin/env python
"""GhostNet on ImageNet with tensorpack: evaluation (--eval), a FLOPs table (--flops), a demo (--demo).

    python main.py --eval --data_dir=/path/to/imagenet/dir/ --load=./models/ghostnet_checkpoint
"""
import argparse
import os
import sys

import compat  # noqa: F401  (must come before TensorFlow)
import tensorflow as tf
from tabulate import tabulate
from tensorpack.tfutils.tower import TowerContext
from tensorpack.utils import logger

import flops
from ghostnet import GhostNet, parse_code
from imagenet_utils import (CheckedInit, CheckpointError, DataError, evaluate, get_val_dataflow,
                            list_val_images, read_synsets)
from sample_data import write_sample_dataset

tfv1 = tf.compat.v1

IMAGENET_CLASSES = 1000
DEMO_DIR = './demo_data'


class UsageError(Exception):
    """Flags that do not fit this machine (GPUs, data format)."""


def get_parser():
    """The command line: the released CLI's flags, plus --meta_dir, --workers, --skip-bad-images, --demo."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--eval', action='store_true', help='report top-1/top-5 error on val/')
    parser.add_argument('--flops', action='store_true',
                        help='print the layers with parameters and multiply-adds, then exit')
    parser.add_argument('--demo', action='store_true',
                        help='write a small sample dataset into --data_dir (default {}) and evaluate '
                             'on it'.format(DEMO_DIR))
    parser.add_argument('--data_dir', help='ImageNet directory: val/ (flat or in <wnid>/ subfolders), '
                                           'train/, caffe_ilsvrc12/')
    parser.add_argument('--meta_dir', help='caffe ilsvrc12 metadata (synsets.txt, val.txt, ...); '
                                           'default DATA_DIR/caffe_ilsvrc12')
    parser.add_argument('--load', help='weights: a TF checkpoint prefix, a training log directory '
                                       '(its latest checkpoint) or a tensorpack .npz; '
                                       'without it the weights are random')
    parser.add_argument('--gpu', help='comma-separated GPU ids to use (CUDA_VISIBLE_DEVICES); '
                                      'default: all visible. Evaluation runs one tower per GPU')
    parser.add_argument('--batch', type=int, default=256,
                        help='evaluation batch size over all GPUs (default %(default)s)')
    parser.add_argument('--data-format', choices=['NHWC', 'NCHW'], default='NHWC',
                        help='layout inside the network (NCHW needs a GPU)')
    parser.add_argument('--image_size', type=int, default=224,
                        help='center crop size S; the shorter edge is first resized to int(S*256/224)')
    parser.add_argument('--width_ratio', type=float, default=1.0, help='width multiplier (0.5, 1.0, 1.3)')
    parser.add_argument('--se', type=int, choices=[0, 1], default=1,
                        help='squeeze-and-excitation in the bottlenecks that have it (1) or none (0)')
    parser.add_argument('--dw_code_str', default='',
                        help='16 comma-separated kernel sizes d of the cheap operations, one per '
                             'bottleneck (default: all 3)')
    parser.add_argument('--ratio_code_str', default='',
                        help='16 comma-separated ratios s of the Ghost modules, one per bottleneck '
                             '(default: all 2)')
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                        help='threads decoding and resizing images (default: the CPU count, %(default)s)')
    parser.add_argument('--skip-bad-images', action='store_true',
                        help='skip images that can not be decoded (reported at the end) instead of '
                             'stopping')
    return parser


def parse_args(argv=None):
    """Parsed and checked flags; `dw_code` and `ratio_code` hold the parsed code strings."""
    parser = get_parser()
    args = parser.parse_args(argv)
    try:
        args.dw_code = parse_code(args.dw_code_str, '--dw_code_str') if args.dw_code_str else None
        args.ratio_code = parse_code(args.ratio_code_str, '--ratio_code_str') if args.ratio_code_str else None
    except ValueError as e:
        parser.error(str(e))
    if not (args.eval or args.flops or args.demo):
        parser.error('nothing to do: pass --eval (with --data_dir and --load), --demo or --flops')
    if args.eval and not args.data_dir:
        parser.error('--eval needs --data_dir, the ImageNet directory holding val/ and caffe_ilsvrc12/')
    for name in ('batch', 'workers', 'image_size'):
        if getattr(args, name) < 1:
            parser.error('--{} must be positive'.format(name))
    if args.width_ratio <= 0:
        parser.error('--width_ratio must be positive')
    return args


def build_model(args, num_classes):
    """GhostNet as the flags describe it, with `num_classes` outputs."""
    return GhostNet(num_classes=num_classes, width=args.width_ratio, se=bool(args.se),
                    dw_code=args.dw_code, ratio_code=args.ratio_code, data_format=args.data_format,
                    image_shape=args.image_size)


def num_towers(args):
    """One tower per visible GPU (after --gpu); one on the CPU when there is none."""
    gpus = len(tf.config.list_physical_devices('GPU'))
    if args.gpu and gpus < len(args.gpu.split(',')):
        raise UsageError('--gpu {}: only {} of these GPUs are visible'.format(args.gpu, gpus))
    if args.data_format == 'NCHW' and not gpus:
        raise UsageError('--data-format NCHW needs a GPU; use NHWC on the CPU')
    return max(gpus, 1)


def run_eval(args):
    """Top-1/top-5 error on DATA_DIR/val; the last two lines printed are the released format."""
    meta_dir = args.meta_dir or os.path.join(args.data_dir, 'caffe_ilsvrc12')
    examples = list_val_images(args.data_dir, meta_dir)
    num_classes = len(read_synsets(meta_dir))
    towers = num_towers(args)
    if args.load:
        session_init = CheckedInit(args.load)
    else:
        session_init = None
        logger.warn('No --load given: evaluating randomly initialized weights.')
    logger.info('Evaluating {} images of {} classes from {} on {} tower(s).'.format(
        len(examples), num_classes, args.data_dir, towers))
    bad_images = [] if args.skip_bad_images else None
    dataflow = get_val_dataflow(examples, max(args.batch // towers, 1), args.image_size,
                                args.workers, bad_images)
    top1, top5, count, seconds = evaluate(build_model(args, num_classes), session_init, dataflow, towers)
    if bad_images:
        print('Skipped {} images that could not be decoded: {}'.format(
            len(bad_images), ', '.join(sorted(bad_images))))
    print('Evaluated {} images in {:.1f} s ({:.1f} images/s)'.format(count, seconds, count / seconds))
    print('Top1 Error: {}'.format(top1))
    print('Top5 Error: {}'.format(top5))


def run_demo(args):
    """Write a sample dataset (unless DATA_DIR already holds data) and evaluate on it."""
    args.data_dir = args.data_dir or DEMO_DIR
    if os.path.isdir(args.data_dir) and os.listdir(args.data_dir):
        logger.info('Using the data already in {} (delete it for a fresh sample).'.format(args.data_dir))
    else:
        logger.info('Writing a sample dataset in the ImageNet layout to {} ...'.format(args.data_dir))
        write_sample_dataset(args.data_dir)
    run_eval(args)


def print_flops(args):
    """Build the network at batch 1 and print its layers, parameters and multiply-adds."""
    model = build_model(args, IMAGENET_CLASSES)
    with tf.Graph().as_default() as graph, TowerContext('', is_training=False):
        image = tfv1.placeholder(tf.float32, [1, args.image_size, args.image_size, 3], 'input')
        model.get_logits(model.image_preprocess(image))
    print(tabulate(flops.layer_table(graph), intfmt=',',
                   headers=['layer', 'op', 'output shape', 'params', 'multiply-adds']))
    multiply_adds, profiled = flops.total_multiply_adds(graph), flops.profiler_flops(graph)
    print('Total: {:,} parameters, {:,} multiply-adds ({:.0f}M, a multiply-add counted once as in '
          'the paper: convolutions, depthwise convolutions, SE and classifier).'.format(
              flops.total_params(graph), multiply_adds, multiply_adds / 1e6))
    print('TensorFlow profiler: {:,} float operations ({:.0f}M); it counts a multiply-add as two '
          'and adds batch norm, activations, pooling and other element-wise ops.'.format(
              profiled, profiled / 1e6))


def main(argv=None):
    """Run the mode the flags select; bad input ends with one `error: ...` line and status 1."""
    args = parse_args(argv)
    if args.gpu:
        os.environ['CUDA_VISIBLE_DEVICES'] = args.gpu
    try:
        if args.flops:
            print_flops(args)
        elif args.demo:
            run_demo(args)
        else:
            run_eval(args)
    except (UsageError, DataError, CheckpointError) as e:
        sys.exit('error: {}'.format(e))
    return 0


if __name__ == '__main__':
    sys.exit(main())
