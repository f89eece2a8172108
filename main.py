#!/usr/bin/env python
"""GhostNet, and the Ghost module plugged into ResNet-50, VGG-16 and ResNet-56, with tensorpack:
training, evaluation (--eval), prediction, export, a FLOPs table (--flops), a demo.

    python main.py --data_dir=/path/to/imagenet/dir/ --logdir train_log/ghostnet    # train
    python main.py --eval --data_dir=/path/to/imagenet/dir/ --load=./models/ghostnet_checkpoint
    python main.py --arch ghost-vgg16 --data_dir=/path/to/cifar-10-batches-py      # CIFAR-10

Exit status: 0 done, 1 an error (one `error: ...` line), 2 bad flags, 75 training stopped by a
signal after saving a checkpoint (run the same command again to resume).
"""
import argparse
import atexit
import fractions
import gc
import os
import sys

from runtime import console  # before TensorFlow: it may route TensorFlow's native messages

if __name__ == '__main__' and not console.verbose_requested(sys.argv[1:]):
    console.route_native_logs()

import compat  # noqa: F401,E402  (must come before TensorFlow)
import tensorflow as tf
from tabulate import tabulate
from tensorpack import (HorovodTrainer, QueueInput, SimpleTrainer, SyncMultiGPUTrainerReplicated,
                        TrainConfig, launch_train_with_config)
from tensorpack.callbacks import (ClassificationError, EstimatedTimeLeft, MinSaver, ModelSaver, MovingAverageSummary,
                                  PeriodicTrigger, ProgressBar, RunUpdateOps)
from tensorpack.dataflow import FakeData
from tensorpack.utils import logger

from deploy import agreement, export
from networks import flops
from ghostnet import add_model_arguments, check_model_arguments
from data import cifar
from runtime.command_line import FlagParser
from runtime.session import InitializedSession
from runtime.callbacks import (BadImageLog, ResumeAtGlobalStep, StopOnNonFiniteLoss, SummariesOfTheLastStep, Validation,
                               WarmupCosineSchedule, WarmupExponentialSchedule, WarmupStepSchedule)
from weights.checkpoint import CheckpointError, latest_intact_checkpoint, saved_checkpoints
from runtime.preemption import SaveAndStop, StopRequest, signals_request_stop
from weights.resume import ResumeInit
from weights.state_dict import session_init
from runtime.workers import WatchIdleWorkers, watch_workers
from imagenet_utils import (EVAL_BATCH, DataError, evaluate, get_train_dataflow, get_val_dataflow,
                            list_train_images, list_val_images, read_synsets, tower_devices)
from networks import ARCHITECTURES, CIFAR10, DATASET_CLASSES, build_model
from data.samples import DEMO_DEFAULTS, DEMO_DIR, write_sample_dataset


# exit statuses: 0 done, 1 an error (one `error: ...` line), 2 bad flags (argparse),
# STOPPED when a signal stopped training after saving a checkpoint (EX_TEMPFAIL: run it again)
STOPPED = 75


class UsageError(Exception):
    """Flags that do not fit this machine (GPUs, data format)."""


class TrainingDiverged(Exception):
    """The training loss became NaN or infinite."""


class TrainingStopped(Exception):
    """A signal (preemption, Ctrl-C) stopped training after it saved a checkpoint."""


def get_parser():
    """The command line: the released CLI's flags, and those for training, prediction, export and the demo."""
    parser = FlagParser(description=__doc__, epilog=architecture_list(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', choices=list(ARCHITECTURES), default='ghostnet',
                        help='the network, one of those listed below (default %(default)s)')
    parser.add_argument('--eval', action='store_true', help='report top-1/top-5 error on val/')
    parser.add_argument('--flops', action='store_true',
                        help='print the layers with parameters and multiply-adds, then exit')
    parser.add_argument('--demo', action='store_true',
                        help='write a small sample dataset into --data_dir (default {}), train on it '
                             'briefly (defaults {}) and evaluate'.format(
                                 DEMO_DIR, ', '.join('--{} {}'.format(*kv) for kv in DEMO_DEFAULTS.items())))
    parser.add_argument('--predict', nargs='+', metavar='IMG',
                        help='print the top-5 classes of these images (with --load)')
    parser.add_argument('--export', metavar='OUT_DIR',
                        help='write OUT_DIR/saved_model (batch norm folded; uint8 RGB in) from --load')
    parser.add_argument('--tflite', action='store_true', help='with --export: also a TFLite file')
    parser.add_argument('--onnx', action='store_true', help='with --export: also OUT_DIR/<arch>.onnx')
    parser.add_argument('--quantize', choices=export.QUANTIZE_MODES, default='none',
                        help='with --export: a TFLite file with weights (dynamic) or weights and activations '
                             '(int8, calibrated on --representative) in 8 bits, beside the float one, checked '
                             'against it on held-back images')
    parser.add_argument('--representative', metavar='DIR',
                        help='images to calibrate int8 on, drawn across its class folders (<class>/*.jpg); '
                             'without --validate, those not drawn are held back to check the file on')
    parser.add_argument('--validate', metavar='DIR',
                        help='held-back images to check a quantized file on: its top-1 agreement with the '
                             'float file, and both errors when the images are in class folders')
    parser.add_argument('--min_agreement', type=float, default=agreement.MIN_AGREEMENT,
                        help='least top-1 agreement of the quantized file with the float file (default %(default)s)')
    parser.add_argument('--max_error_rise', type=float, default=agreement.MAX_ERROR_RISE,
                        help='most the quantized file\'s top-1 error may exceed the float file\'s '
                             '(default %(default)s)')
    parser.add_argument('--data_dir', help='ImageNet directory: val/ (flat or in <wnid>/ subfolders), '
                                           'train/, caffe_ilsvrc12/; CIFAR-10 networks: '
                                           'cifar-10-batches-py/ or the folder holding it')
    parser.add_argument('--meta_dir', help='caffe ilsvrc12 metadata (synsets.txt, val.txt, ...); '
                                           'default DATA_DIR/caffe_ilsvrc12')
    parser.add_argument('--load', help='weights: a TF checkpoint prefix, a training log directory '
                                       '(its latest checkpoint) or a tensorpack .npz; for ghostnet-pytorch '
                                       'also a PyTorch state dict (.safetensors, or .pth with torch '
                                       'installed); without it the weights are random')
    parser.add_argument('--gpu', help='comma-separated GPU ids to use (CUDA_VISIBLE_DEVICES); '
                                      'default: all visible. Evaluation runs one tower per GPU')
    parser.add_argument('--batch', type=int,
                        help='total batch size over all GPUs and machines (default: the --arch recipe\'s '
                             'for training, {} for evaluation)'.format(EVAL_BATCH))
    parser.add_argument('--data_format', choices=['NHWC', 'NCHW'], default='NHWC',
                        help='layout inside the network (NCHW needs a GPU)')
    parser.add_argument('--image_size', type=int,
                        help='ImageNet: center crop size S (default 224); the shorter edge is first resized '
                             'to int(S*256/224). CIFAR-10: 32')
    add_model_arguments(parser)
    parser.add_argument('--ratio', type=int, help='ghost-* networks: ratio s of every Ghost module (default 2)')
    parser.add_argument('--dw', type=int,
                        help='ghost-* networks: kernel size d of every cheap depthwise operation (default 3)')
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                        help='processes decoding images (default: the CPU count, %(default)s)')
    train = parser.add_argument_group(
        'training (the default mode)', 'each network\'s recipe gives the defaults (logged at start); '
        'flags override them')
    train.add_argument('--logdir', help='checkpoints and logs (default train_log/<arch>[-<width>][-s<ratio>-d<dw>]); '
                                        'training resumes from the latest checkpoint there')
    train.add_argument('--restart', action='store_true',
                       help='start afresh although --logdir holds a run (it is moved aside, not deleted)')
    train.add_argument('--epochs', type=int,
                       help='(ghostnet 400, ghostnetv2 450, ghostnetv3 300, resnet50 90, CIFAR-10 164)')
    train.add_argument('--steps_per_epoch', type=int,
                       help='default: the training images over the total batch')
    train.add_argument('--lr', type=float, help='learning rate per 256 images, scaled linearly to --batch '
                                                '(0.1; CIFAR-10 0.2, which is 0.1 at batch 128)')
    train.add_argument('--optimizer', choices=['sgd', 'rmsprop'],
                       help='SGD with momentum (the default), or TensorFlow\'s RMSProp (decay 0.9, epsilon 1e-3, '
                            '--momentum: ghostnetv2)')
    train.add_argument('--momentum', type=float, help='momentum (0.9)')
    train.add_argument('--nesterov', type=int, choices=[0, 1],
                       help='Nesterov momentum, SGD only (ghostnet, ghostnetv3 1, the others 0)')
    train.add_argument('--lr_schedule', choices=['cosine', 'step', 'exponential'],
                       help='after the warm-up: cosine decay to zero (ghostnet, ghostnetv3), division by 10 at '
                            '--lr_decay_at (ResNet, VGG), or x--lr_decay_rate every --lr_decay_every epochs '
                            '(ghostnetv2)')
    train.add_argument('--lr_decay_every', type=float, default=2.4,
                       help='exponential schedule: epochs between decays (default: %(default)s)')
    train.add_argument('--lr_decay_rate', type=float, default=0.973,
                       help='exponential schedule: the factor of each decay (default: %(default)s)')
    train.add_argument('--lr_decay_at', help='step schedule: fractions of training where the learning rate is '
                                             'divided by 10 (resnet50 1/3,2/3; CIFAR-10 1/2,3/4)')
    train.add_argument('--warmup_epochs', type=float,
                       help='linear warm-up (ghostnet 5, ghostnetv2 and v3 3, the others 0)')
    train.add_argument('--weight_decay', type=float,
                       help='L2 on the kernels (ghostnet 4e-5 on .../W only; ghostnetv2 1e-5, v3 2e-5; the '
                            'others 1e-4)')
    train.add_argument('--label_smoothing', type=float, help='(the Ghost family 0.1, the others 0)')
    train.add_argument('--dropout_keep_prob', type=float,
                       help='before the classifier (ghostnet, ghostnetv2 0.8, vgg16 0.5, the others 1)')
    train.add_argument('--min_crop_area', type=float,
                       help='ImageNet: smallest random crop, as a fraction of the image (default 0.08; '
                            '0.49 for ghostnet below width 1)')
    train.add_argument('--val_every', type=int, default=1, help='validate every N epochs (default 1)')
    train.add_argument('--keep_checkpoints', type=int, default=3,
                       help='recent checkpoints kept, beside the best one (default %(default)s)')
    train.add_argument('--fake', action='store_true', help='random data, to measure throughput')
    train.add_argument('--horovod', action='store_true',
                       help='data-parallel over processes started by horovodrun (several machines)')
    parser.add_argument('--skip_bad_images', action='store_true',
                        help='skip images that can not be decoded (reported at the end) instead of '
                             'stopping')
    parser.add_argument('--verbose', action='store_true',
                        help='every log line on the terminal, TensorFlow\'s own included (training '
                             'writes them to LOGDIR/log.log either way)')
    return parser


def parse_args(argv=None):
    """Parsed and checked flags; `dw_code` and `ratio_code` hold the parsed code strings."""
    parser = get_parser()
    if '--demo' in (sys.argv[1:] if argv is None else argv):
        parser.set_defaults(**DEMO_DEFAULTS)
    args = parser.parse_args(argv)
    apply_recipe(args, parser)
    check_model_arguments(args, parser)
    modes = [flag for flag in ('eval', 'flops', 'demo', 'predict', 'export') if getattr(args, flag)]
    if len(modes) > 1 and set(modes) != {'predict', 'export'}:
        parser.error('choose one of --eval, --flops, --demo, --predict/--export (got {})'.format(
            ', '.join('--' + m for m in modes)))
    if not args.export and (args.tflite or args.onnx or args.quantize != 'none' or args.representative or
                            args.validate):
        parser.error('--tflite, --onnx, --quantize, --representative and --validate go with --export OUT_DIR')
    args.train = not modes
    if (args.predict or args.export) and not args.load:
        parser.error('--predict and --export need --load, the checkpoint to use')
    if not args.data_dir and (args.eval or (args.train and not args.fake)):
        parser.error('--data_dir is needed: the ImageNet directory holding train/, val/ and '
                     'caffe_ilsvrc12/, or for CIFAR-10 cifar-10-batches-py/ (or pass --demo, --flops, or '
                     '--fake to train on random data)')
    if args.data_dir and not args.meta_dir:
        args.meta_dir = os.path.join(args.data_dir, 'caffe_ilsvrc12')
    args.batch = args.batch or (ARCHITECTURES[args.arch].recipe['batch'] if args.train else EVAL_BATCH)
    check_ranges(args, parser)
    return args


def check_ranges(args, parser):
    """A usage error for a numeric flag outside the values it can take."""
    positive = ('batch', 'workers', 'image_size', 'epochs', 'val_every', 'keep_checkpoints')
    ranges = [(name, getattr(args, name) > 0, 'must be positive') for name in positive]
    ranges += [(name, getattr(args, name) >= 0, 'must be at least 0')
               for name in ('lr', 'weight_decay', 'warmup_epochs')]
    ranges += [('steps_per_epoch', args.steps_per_epoch is None or args.steps_per_epoch > 0, 'must be positive'),
               ('momentum', 0 <= args.momentum < 1, 'must be at least 0 and below 1'),
               ('lr_decay_every', args.lr_decay_every > 0, 'must be positive'),
               ('lr_decay_rate', 0 < args.lr_decay_rate <= 1, 'must be above 0 and at most 1'),
               ('label_smoothing', 0 <= args.label_smoothing < 1, 'must be at least 0 and below 1'),
               ('dropout_keep_prob', 0 < args.dropout_keep_prob <= 1, 'must be above 0 and at most 1'),
               ('min_crop_area', 0 < args.min_crop_area <= 1, 'must be above 0 and at most 1'),
               ('min_agreement', 0 <= args.min_agreement <= 1, 'must be between 0 and 1'),
               ('max_error_rise', 0 <= args.max_error_rise <= 1, 'must be between 0 and 1')]
    for name, ok, rule in ranges:
        if not ok:
            parser.error('--{} {} (got {})'.format(name, rule, getattr(args, name)))


def architecture_list():
    """--help's list of the networks, one line each."""
    return 'networks (--arch):\n' + '\n'.join('  {:16s}{}'.format(name, arch.help)
                                              for name, arch in ARCHITECTURES.items())


def apply_recipe(args, parser):
    """Unset flags from the network's recipe; --ratio and --dw for ghost-* only; --lr_decay_at parsed."""
    arch = ARCHITECTURES[args.arch]
    for name, value in arch.recipe.items():
        if getattr(args, name) is None and name != 'batch':
            setattr(args, name, value)
    if args.min_crop_area is None:
        args.min_crop_area = 0.49 if args.width_ratio < 1 else 0.08
    if arch.ghost is not None and (args.width_ratio != 1 or not args.se):
        parser.error('--width_ratio and --se are GhostNet\'s (--arch ghostnet)')
    if not arch.ghost and (args.ratio is not None or args.dw is not None):
        parser.error('--ratio and --dw set the Ghost modules of the ghost-* networks{}'.format(
            '; GhostNet takes --ratio_code_str and --dw_code_str' if args.arch == 'ghostnet' else ''))
    if arch.ghost is not None and (args.dw_code_str or args.ratio_code_str):
        parser.error('--dw_code_str and --ratio_code_str are GhostNet\'s; use --ratio and --dw')
    args.ratio = 2 if args.ratio is None else args.ratio
    args.dw = 3 if args.dw is None else args.dw
    if args.ratio < 1 or args.dw < 1:
        parser.error('--ratio and --dw must be positive')
    if arch.dataset == CIFAR10 and args.demo:
        parser.error('--demo trains on an ImageNet-layout sample: use an ImageNet --arch (ghostnet, resnet50, '
                     'ghost-resnet50)')
    if arch.dataset == CIFAR10 and args.image_size != cifar.IMAGE_SIZE:
        parser.error('--image_size is {} for the CIFAR-10 networks'.format(cifar.IMAGE_SIZE))
    if args.image_size < arch.model.min_image_size:
        parser.error('--image_size is at least {} for --arch {} (its DFC attention pools the stride-32 maps '
                     '2x2)'.format(arch.model.min_image_size, args.arch))
    try:
        args.lr_decay_fractions = [fractions.Fraction(f) for f in (args.lr_decay_at or '').split(',') if f]
    except (ValueError, ZeroDivisionError):
        parser.error('--lr_decay_at takes fractions such as 1/2,3/4, got {!r}'.format(args.lr_decay_at))
    if any(not 0 < f < 1 for f in args.lr_decay_fractions) or args.lr_decay_fractions != sorted(
            args.lr_decay_fractions):
        parser.error('--lr_decay_at: increasing fractions between 0 and 1, got {!r}'.format(args.lr_decay_at))


def num_towers(args):
    """One tower per visible GPU (after --gpu); one on the CPU when there is none."""
    gpus = len(tf.config.list_physical_devices('GPU'))
    if args.gpu and gpus < len(args.gpu.split(',')):
        raise UsageError('--gpu {}: only {} of these GPUs are visible'.format(args.gpu, gpus))
    if args.data_format == 'NCHW' and not gpus:
        raise UsageError('--data_format NCHW needs a GPU; use NHWC on the CPU')
    return max(gpus, 1)


def get_eval_data(args, batch_size, bad_images):
    """(dataflow, number of images, number of classes) of DATA_DIR/val, or CIFAR-10's test_batch."""
    if ARCHITECTURES[args.arch].dataset == CIFAR10:
        images, labels, names = cifar.read_split(args.data_dir, 'test')
        return cifar.get_eval_dataflow(images, labels, batch_size), len(images), len(names)
    examples = list_val_images(args.data_dir, args.meta_dir)
    num_classes = len(read_synsets(args.meta_dir))
    dataflow = get_val_dataflow(examples, batch_size, args.image_size, args.workers, bad_images)
    return dataflow, len(examples), num_classes


def run_eval(args):
    """Top-1/top-5 error on the evaluation images (an EvaluationResult); the last two lines printed are the
    released format, the one before them the time and rate."""
    towers = num_towers(args)
    bad_images = [] if args.skip_bad_images else None
    dataflow, num_images, num_classes = get_eval_data(args, max(args.batch // towers, 1), bad_images)
    model = build_model(args, num_classes)
    if args.load:
        weights = session_init(args.load, model)
    else:
        weights = None
        logger.warn('No --load given: evaluating randomly initialized weights.')
    logger.info('Evaluating {} on {} images of {} classes from {} on {} tower(s).'.format(
        args.arch, num_images, num_classes, args.data_dir, towers))
    devices = tower_devices(towers, tf.config.list_physical_devices('GPU'))
    result = evaluate(model, weights, dataflow, devices)
    del dataflow
    gc.collect()    # its worker processes end now, not after the results
    if bad_images:
        print('Skipped {} images that could not be decoded: {}'.format(
            len(bad_images), ', '.join(sorted(bad_images))))
    print(evaluation_time(result))
    print('Top1 Error: {}'.format(result.top1))
    print('Top5 Error: {}'.format(result.top5))
    return result


def evaluation_time(result):
    """'Evaluated N images in T s: R images/s after the first batch (B images in F s: the graph's first run)'."""
    line = 'Evaluated {} images in {:.1f} s'.format(result.images, result.seconds)
    first = '{} images in {:.2f} s'.format(result.first_images, result.first_seconds)
    if result.rate is None:
        return '{} (all in the first batch: the graph\'s first run)'.format(line)
    return '{}: {:.1f} images/s after the first batch ({}: the graph\'s first run)'.format(line, result.rate, first)


def get_trainer(args, towers):
    """Horovod across processes, replicated variables with NCCL across GPUs, or a single tower."""
    if args.horovod:
        trainer = HorovodTrainer(average=True)
        # Averaged gradients keep the weights equal on every rank, and rank 0 alone validates and
        # saves: broadcasting its variables once at the start is enough.
        trainer.BROADCAST_EVERY_EPOCH = False
        return trainer
    if towers > 1:   # NCCL on GPUs; on CPU devices (tests) an all-reduce of add_n, run where it is placed
        return SyncMultiGPUTrainerReplicated(towers, mode='nccl' if tf.config.list_physical_devices('GPU')
                                             else 'gpu')
    return SimpleTrainer()


def set_logdir(args, is_chief):
    """Log to --logdir (on the chief): kept for resuming, or moved aside with --restart."""
    args.logdir = args.logdir or os.path.join('train_log', default_run_name(args))
    if is_chief:
        logger.set_logger_dir(args.logdir, action='b' if args.restart else 'k')
        console.log_native_messages_to(os.path.join(args.logdir, 'log.log'))
        print('Training {} in {} (every log line in {}).'.format(
            args.arch, args.logdir, os.path.join(args.logdir, 'log.log')), file=sys.stderr)


def default_run_name(args):
    """<arch>, with the width for ghostnet and s and d for the ghost-* networks."""
    arch = ARCHITECTURES[args.arch]
    if arch.ghost is None:
        return '{}-{}'.format(args.arch, args.width_ratio)
    return '{}-s{}-d{}'.format(args.arch, args.ratio, args.dw) if arch.ghost else args.arch


def get_data(args, batch_per_tower, bad_image_log, with_val):
    """(training dataflow, validation dataflow or None, number of classes, training images)."""
    dataset = ARCHITECTURES[args.arch].dataset
    if args.fake:
        classes = DATASET_CLASSES[dataset]
        shapes = [[batch_per_tower, args.image_size, args.image_size, 3], [batch_per_tower]]
        fake = FakeData(shapes, 1000, random=False, dtype=['uint8', 'int32'], domain=[(0, 255), (0, classes - 1)])
        return fake, None, classes, 100 * args.batch
    if dataset == CIFAR10:
        images, labels, names = cifar.read_split(args.data_dir, 'train')
        check_batch_fits(args, batch_per_tower, len(images))
        val_df = cifar.get_eval_dataflow(*cifar.read_split(args.data_dir, 'test')[:2], batch_per_tower) \
            if with_val else None
        return cifar.get_train_dataflow(images, labels, batch_per_tower), val_df, len(names), len(images)
    train = list_train_images(args.data_dir, args.meta_dir)
    check_batch_fits(args, batch_per_tower, len(train))
    train_df = get_train_dataflow(train, batch_per_tower, bad_image_log, args.image_size,
                                  args.min_crop_area, args.workers)
    val_df = None
    if with_val:
        val = list_val_images(args.data_dir, args.meta_dir)
        val_df = get_val_dataflow(val, batch_per_tower, args.image_size, args.workers,
                                  bad_images=bad_image_log.validation_names)
    return train_df, val_df, len(read_synsets(args.meta_dir)), len(train)


def check_batch_fits(args, batch_per_tower, num_images):
    """UsageError when one tower's batch needs more images than training has."""
    if batch_per_tower > num_images:
        raise UsageError('--batch {}: {} images per tower and step, but {} holds {} training images'.format(
            args.batch, batch_per_tower, args.data_dir, num_images))


def default_callbacks():
    """tensorpack's default callbacks, with the epoch's summaries fetched at every step (`SummariesOfTheLastStep`)."""
    return [MovingAverageSummary(), ProgressBar(), SummariesOfTheLastStep(), RunUpdateOps()]


def validation_callbacks(val_df, every_k_epochs, stop_request):
    """Top-1/top-5 error on val/ every few epochs (on the first tower; given up when training is asked to
    stop), and a copy of the best checkpoint."""
    errors = [ClassificationError('wrong-top1', 'val-error-top1'),
              ClassificationError('wrong-top5', 'val-error-top5')]
    validation = Validation(val_df, errors, stop_request.requested)
    return [PeriodicTrigger(validation, every_k_epochs=every_k_epochs), MinSaver('val-error-top1')]


def learning_rate_schedule(args, steps_per_epoch):
    """--lr per 256 images at --batch, warmed up, then cosine, divided by 10 at --lr_decay_at, or exponential."""
    base_lr = args.lr * args.batch / 256
    warmup_steps, total_steps = int(args.warmup_epochs * steps_per_epoch), args.epochs * steps_per_epoch
    if args.lr_schedule == 'cosine':
        return WarmupCosineSchedule(base_lr, warmup_steps, total_steps)
    if args.lr_schedule == 'exponential':
        return WarmupExponentialSchedule(base_lr, warmup_steps, args.lr_decay_every * steps_per_epoch,
                                         args.lr_decay_rate)
    return WarmupStepSchedule(base_lr, warmup_steps, [round(f * total_steps) for f in args.lr_decay_fractions])


def resume_init(logdir, model):
    """Restores everything from the newest intact checkpoint in --logdir (if it fits `model`), or None
    without one."""
    if not saved_checkpoints(logdir):
        return None
    path = latest_intact_checkpoint(logdir)
    logger.info('Will load checkpoint at {}.'.format(path))
    return ResumeInit(path, logdir, model)


def last_intact_checkpoint(logdir):
    """The newest checkpoint in --logdir that reads back intact, or None."""
    try:
        return latest_intact_checkpoint(logdir)
    except CheckpointError:
        return None


def get_config(args, towers, workers, is_chief, stop_on_nan, stop_request):
    """The TrainConfig of the paper's recipe; it resumes from the latest checkpoint in --logdir."""
    if args.batch % (towers * workers):
        raise UsageError('--batch {} does not split evenly over {} GPUs x {} processes'.format(
            args.batch, towers, workers))
    bad_image_log = BadImageLog()
    train_df, val_df, num_classes, num_images = get_data(args, args.batch // (towers * workers),
                                                         bad_image_log, with_val=is_chief)
    steps_per_epoch = args.steps_per_epoch or max(num_images // args.batch, 1)
    watch_workers(train_df, stop_request.fail)
    watch_workers(val_df, stop_request.fail)
    saver = ModelSaver(max_to_keep=args.keep_checkpoints)
    callbacks = [saver, learning_rate_schedule(args, steps_per_epoch), stop_on_nan, EstimatedTimeLeft(),
                 ResumeAtGlobalStep(), SaveAndStop(stop_request, saver, args.horovod)]
    if not args.fake:
        if is_chief:
            callbacks += validation_callbacks(val_df, args.val_every, stop_request)
            callbacks.append(WatchIdleWorkers(val_df, stop_request.fail))
        callbacks.append(bad_image_log)
    model = build_model(args, num_classes)
    config = dict(model=model, data=QueueInput(train_df), callbacks=callbacks,
                  steps_per_epoch=steps_per_epoch, max_epoch=args.epochs)
    # Horovod broadcasts rank 0's values to the other ranks; a checkpoint in --logdir wins over --load
    weights = resume_init(args.logdir, model) if is_chief else None
    if weights is None and args.load and is_chief:
        weights = session_init(args.load, model, fine_tune_scope=model.classifier_scope)
    return TrainConfig(session_init=weights, session_creator=InitializedSession(), extra_callbacks=default_callbacks(),
                       **config)


def run_train(args, extra_callbacks=()):
    """Train, resuming from --logdir; ends with a summary, or an error when the loss diverged, or
    when a signal or a dead data worker stopped it (after saving a checkpoint)."""
    towers = 1 if args.horovod else num_towers(args)
    trainer = get_trainer(args, towers)
    workers, is_chief = (trainer.hvd.size(), trainer.hvd.rank() == 0) if args.horovod else (1, True)
    set_logdir(args, is_chief)
    logger.info('Flags: {}'.format(' '.join('--{}={}'.format(k, v) for k, v in sorted(vars(args).items()))))
    stop_on_nan, stop_request = StopOnNonFiniteLoss(), StopRequest()
    config = get_config(args, towers, workers, is_chief, stop_on_nan, stop_request)
    config.callbacks.extend(extra_callbacks)
    with signals_request_stop(stop_request):
        launch_train_with_config(config, trainer)
    if stop_request.requested():
        atexit.register(stop_request.report)   # the signals that come while the process ends are logged too
        raise_stopped(stop_request, trainer.loop.global_step, is_chief)
    if stop_on_nan.bad_step is not None:
        last_good = last_intact_checkpoint(args.logdir)
        raise TrainingDiverged('the loss became NaN or infinite at global step {}; training stopped. {}'.format(
            stop_on_nan.bad_step, 'The last good checkpoint is {}'.format(last_good) if last_good
            else 'No checkpoint was written before it (try a lower --lr)'))
    if is_chief:
        summarize_training(trainer, args.logdir)


def raise_stopped(stop_request, global_step, is_chief):
    """TrainingStopped (a signal) or DataError (a dead worker), saying where it saved and how to resume."""
    stop_request.report()   # the signals received while it saved, after the loop's last look
    if stop_request.saved:
        saved = 'saved {}; run the same command again to resume from it'.format(stop_request.saved)
    else:
        saved = 'rank 0 saved the checkpoint' if not is_chief else 'no checkpoint was saved'
    if stop_request.signal_name:
        raise TrainingStopped('Training stopped by {} at global step {}: {}'.format(
            stop_request.signal_name, global_step, saved))
    raise DataError('{}; training stopped at global step {}: {}'.format(stop_request.failure, global_step, saved))


def summarize_training(trainer, logdir):
    """The last line of a training run: steps, the final validation errors, where the checkpoints are."""
    stats = []
    for name in ('val-error-top1', 'val-error-top5', 'bad_images'):
        try:
            stats.append('{} {:.4f}'.format(name, trainer.monitors.get_latest(name)))
        except KeyError:
            pass
    print('Training done at global step {}{}; checkpoints in {}'.format(
        trainer.loop.global_step, ''.join(', ' + s for s in stats), logdir))


def run_demo(args):
    """Write a sample dataset (unless DATA_DIR already holds data), train briefly on it, evaluate."""
    args.data_dir = args.data_dir or DEMO_DIR
    args.meta_dir = args.meta_dir or os.path.join(args.data_dir, 'caffe_ilsvrc12')
    if os.path.isdir(args.data_dir) and os.listdir(args.data_dir):
        logger.info('Using the data already in {} (delete it for a fresh sample).'.format(args.data_dir))
    else:
        logger.info('Writing a sample dataset in the ImageNet layout to {} ...'.format(args.data_dir))
        write_sample_dataset(args.data_dir)
    args.logdir = args.logdir or os.path.join(args.data_dir, 'train_log')
    run_train(args)
    gc.collect()    # the training dataflow's worker processes end now, not after the results
    args.load = args.logdir
    run_eval(args)


def run_export_or_predict(args):
    """--export and/or --predict, with the number of classes the checkpoint has."""
    num_towers(args)    # checks --gpu and --data_format
    model = build_model(args, export.checkpoint_num_classes(ARCHITECTURES[args.arch].model, args.load))
    if args.export:
        export.export(model, args.load, args.export, args.tflite, args.quantize, args.representative, args.arch,
                      args.onnx, args.validate, (args.min_agreement, args.max_error_rise))
    if args.predict:
        for path, top5 in export.predict(model, args.load, args.predict, prediction_class_names(args, model)):
            print(path)
            print('\n'.join('  {:.4f}  {}'.format(p, name) for _, name, p in top5))


def prediction_class_names(args, model):
    """Class names for --predict: ImageNet's from --meta_dir, CIFAR-10's from batches.meta, else indices."""
    if ARCHITECTURES[args.arch].dataset != CIFAR10:
        return export.class_names(args.meta_dir, model.num_classes)
    names = cifar.class_names(args.data_dir) if args.data_dir else []
    if len(names) == model.num_classes:
        return names
    if names:
        logger.warn('batches.meta has {} classes, the model {}; showing indices'.format(len(names), model.num_classes))
    return None


def print_flops(args):
    """Build the network at batch 1 and print its layers, parameters and multiply-adds."""
    graph = flops.inference_graph(build_model(args, DATASET_CLASSES[ARCHITECTURES[args.arch].dataset]))
    table = flops.layer_table(graph)
    print(tabulate(table, intfmt=',', headers=['layer', 'op', 'output shape', 'params', 'multiply-adds']))
    multiply_adds = sum(row.multiply_adds for row in table)
    profiled = flops.profiler_flops(graph)
    print('Total: {:,} parameters, {:,} multiply-adds ({:.0f}M, a multiply-add counted once as in '
          'the paper: convolutions, depthwise convolutions and fully connected layers).'.format(
              flops.total_params(graph), multiply_adds, multiply_adds / 1e6))
    print('TensorFlow profiler: {:,} float operations ({:.0f}M); it counts a multiply-add as two '
          'and adds batch norm, activations, pooling and other element-wise ops.'.format(
              profiled, profiled / 1e6))


def main(argv=None):
    """Run the mode the flags select; bad input ends with one `error: ...` line and status 1, a
    stop by a signal with one line saying how to resume and status STOPPED."""
    args = parse_args(argv)
    console.configure(args.verbose)
    if args.gpu:
        os.environ['CUDA_VISIBLE_DEVICES'] = args.gpu
    try:
        if args.flops:
            print_flops(args)
        elif args.demo:
            run_demo(args)
        elif args.eval:
            run_eval(args)
        elif args.predict or args.export:
            run_export_or_predict(args)
        else:
            run_train(args)
    except (UsageError, DataError, CheckpointError, TrainingDiverged, agreement.QuantizationLoss) as e:
        sys.exit('error: {}'.format(e))
    except TrainingStopped as e:
        print(e, file=sys.stderr)
        sys.exit(STOPPED)
    return 0


if __name__ == '__main__':
    sys.exit(main())
