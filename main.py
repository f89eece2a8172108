#!/usr/bin/env python
"""GhostNet on ImageNet with tensorpack: training, evaluation (--eval), a FLOPs table (--flops), a demo.

    python main.py --data_dir=/path/to/imagenet/dir/ --logdir train_log/ghostnet    # train
    python main.py --eval --data_dir=/path/to/imagenet/dir/ --load=./models/ghostnet_checkpoint

Exit status: 0 done, 1 an error (one `error: ...` line), 2 bad flags, 75 training stopped by a
signal after saving a checkpoint (run the same command again to resume).
"""
import argparse
import gc
import os
import sys

import compat  # noqa: F401  (must come before TensorFlow)
import tensorflow as tf
from tabulate import tabulate
from tensorpack import (HorovodTrainer, QueueInput, SimpleTrainer, SyncMultiGPUTrainerReplicated,
                        TrainConfig, launch_train_with_config)
from tensorpack.callbacks import (ClassificationError, DataParallelInferenceRunner,
                                  EstimatedTimeLeft, InferenceRunner, MinSaver, ModelSaver,
                                  PeriodicTrigger)
from tensorpack.dataflow import FakeData
from tensorpack.tfutils.sessinit import SaverRestore
from tensorpack.utils import logger

import export
import flops
from ghostnet import GhostNet, add_model_arguments, check_model_arguments
from callbacks import BadImageLog, ResumeAtGlobalStep, StopOnNonFiniteLoss, WarmupCosineSchedule
from checkpoint import CheckedInit, CheckpointError, latest_intact_checkpoint, saved_checkpoints
from preemption import SaveAndStop, StopRequest, signals_request_stop
from workers import watch_workers
from imagenet_utils import (DataError, evaluate, get_train_dataflow, get_val_dataflow, list_train_images,
                            list_val_images, read_synsets)
from sample_data import write_sample_dataset


IMAGENET_CLASSES = 1000
DEMO_DIR = './demo_data'
TRAIN_BATCH, EVAL_BATCH = 1024, 256
# --demo trains briefly on its small sample: defaults that flags given on the command line override
DEMO_DEFAULTS = dict(image_size=64, batch=32, epochs=10, lr=0.4, warmup_epochs=1)
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
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    parser.add_argument('--quantize', choices=export.QUANTIZE_MODES, default='none',
                        help='with --export: TFLite weights (dynamic) or weights and activations '
                             '(int8, calibrated on --representative) in 8 bits')
    parser.add_argument('--representative', metavar='DIR', help='images to calibrate int8 on')
    parser.add_argument('--data_dir', help='ImageNet directory: val/ (flat or in <wnid>/ subfolders), '
                                           'train/, caffe_ilsvrc12/')
    parser.add_argument('--meta_dir', help='caffe ilsvrc12 metadata (synsets.txt, val.txt, ...); '
                                           'default DATA_DIR/caffe_ilsvrc12')
    parser.add_argument('--load', help='weights: a TF checkpoint prefix, a training log directory '
                                       '(its latest checkpoint) or a tensorpack .npz; '
                                       'without it the weights are random')
    parser.add_argument('--gpu', help='comma-separated GPU ids to use (CUDA_VISIBLE_DEVICES); '
                                      'default: all visible. Evaluation runs one tower per GPU')
    parser.add_argument('--batch', type=int,
                        help='total batch size over all GPUs and machines (default: {} for training, '
                             '{} for evaluation)'.format(TRAIN_BATCH, EVAL_BATCH))
    parser.add_argument('--data-format', choices=['NHWC', 'NCHW'], default='NHWC',
                        help='layout inside the network (NCHW needs a GPU)')
    parser.add_argument('--image_size', type=int, default=224,
                        help='center crop size S; the shorter edge is first resized to int(S*256/224)')
    add_model_arguments(parser)
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                        help='threads (evaluation) or processes (training) decoding images '
                             '(default: the CPU count, %(default)s)')
    train = parser.add_argument_group('training (the default mode), with the paper\'s recipe')
    train.add_argument('--logdir', help='checkpoints and logs (default train_log/ghostnet-<width>); '
                                        'training resumes from the latest checkpoint there')
    train.add_argument('--restart', action='store_true',
                       help='start afresh although --logdir holds a run (it is moved aside, not deleted)')
    train.add_argument('--epochs', type=int, default=400, help='(default %(default)s)')
    train.add_argument('--steps_per_epoch', type=int,
                       help='default: the training images over the total batch')
    train.add_argument('--lr', type=float, default=0.1,
                       help='learning rate per 256 images, scaled linearly to --batch (default %(default)s)')
    train.add_argument('--warmup_epochs', type=float, default=5,
                       help='linear warm-up, then cosine decay to zero (default %(default)s)')
    train.add_argument('--weight_decay', type=float, default=4e-5,
                       help='L2 on the kernels named .../W (default %(default)s)')
    train.add_argument('--label_smoothing', type=float, default=0.1, help='(default %(default)s)')
    train.add_argument('--dropout_keep_prob', type=float, default=0.8, help='before the classifier '
                                                                             '(default %(default)s)')
    train.add_argument('--min_crop_area', type=float,
                       help='smallest random crop, as a fraction of the image (default 0.08; 0.49 for '
                            '--width_ratio below 1)')
    train.add_argument('--val_every', type=int, default=1, help='validate every N epochs (default 1)')
    train.add_argument('--keep_checkpoints', type=int, default=3,
                       help='recent checkpoints kept, beside the best one (default %(default)s)')
    train.add_argument('--fake', action='store_true', help='random data, to measure throughput')
    train.add_argument('--horovod', action='store_true',
                       help='data-parallel over processes started by horovodrun (several machines)')
    parser.add_argument('--skip-bad-images', action='store_true',
                        help='skip images that can not be decoded (reported at the end) instead of '
                             'stopping')
    return parser


def parse_args(argv=None):
    """Parsed and checked flags; `dw_code` and `ratio_code` hold the parsed code strings."""
    parser = get_parser()
    if '--demo' in (sys.argv[1:] if argv is None else argv):
        parser.set_defaults(**DEMO_DEFAULTS)
    args = parser.parse_args(argv)
    check_model_arguments(args, parser)
    modes = [flag for flag in ('eval', 'flops', 'demo', 'predict', 'export') if getattr(args, flag)]
    if len(modes) > 1 and set(modes) != {'predict', 'export'}:
        parser.error('choose one of --eval, --flops, --demo, --predict/--export (got {})'.format(
            ', '.join('--' + m for m in modes)))
    if not args.export and (args.tflite or args.quantize != 'none' or args.representative):
        parser.error('--tflite, --quantize and --representative go with --export OUT_DIR')
    args.train = not modes
    if (args.predict or args.export) and not args.load:
        parser.error('--predict and --export need --load, the checkpoint to use')
    if not args.data_dir and (args.eval or (args.train and not args.fake)):
        parser.error('--data_dir is needed: the ImageNet directory holding train/, val/ and '
                     'caffe_ilsvrc12/ (or pass --demo, --flops, or --fake to train on random data)')
    if args.data_dir and not args.meta_dir:
        args.meta_dir = os.path.join(args.data_dir, 'caffe_ilsvrc12')
    args.batch = args.batch or (TRAIN_BATCH if args.train else EVAL_BATCH)
    if args.min_crop_area is None:
        args.min_crop_area = 0.49 if args.width_ratio < 1 else 0.08
    for name in ('batch', 'workers', 'image_size', 'epochs', 'val_every', 'keep_checkpoints'):
        if getattr(args, name) < 1:
            parser.error('--{} must be positive'.format(name))
    return args


def build_model(args, num_classes):
    """GhostNet as the flags describe it, with `num_classes` outputs."""
    return GhostNet(num_classes=num_classes, width=args.width_ratio, se=bool(args.se),
                    dw_code=args.dw_code, ratio_code=args.ratio_code, data_format=args.data_format,
                    image_shape=args.image_size, weight_decay=args.weight_decay,
                    dropout_keep_prob=args.dropout_keep_prob, label_smoothing=args.label_smoothing)


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
    examples = list_val_images(args.data_dir, args.meta_dir)
    num_classes = len(read_synsets(args.meta_dir))
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
    args.logdir = args.logdir or os.path.join('train_log', 'ghostnet-{}'.format(args.width_ratio))
    if is_chief:
        logger.set_logger_dir(args.logdir, action='b' if args.restart else 'k')


def get_data(args, batch_per_tower, bad_image_log, with_val):
    """(training dataflow, validation dataflow or None, number of classes, training images)."""
    if args.fake:
        shapes = [[batch_per_tower, args.image_size, args.image_size, 3], [batch_per_tower]]
        fake = FakeData(shapes, 1000, random=False, dtype=['uint8', 'int32'],
                        domain=[(0, 255), (0, IMAGENET_CLASSES - 1)])
        return fake, None, IMAGENET_CLASSES, 100 * args.batch
    train = list_train_images(args.data_dir, args.meta_dir)
    train_df = get_train_dataflow(train, batch_per_tower, bad_image_log, args.image_size,
                                  args.min_crop_area, args.workers)
    val_df = None
    if with_val:
        val = list_val_images(args.data_dir, args.meta_dir)
        val_df = get_val_dataflow(val, batch_per_tower, args.image_size, args.workers,
                                  bad_images=bad_image_log.validation_names)
    return train_df, val_df, len(read_synsets(args.meta_dir)), len(train)


def validation_callbacks(val_df, towers, every_k_epochs):
    """Top-1/top-5 error on val/ every few epochs, and a copy of the best checkpoint."""
    errors = [ClassificationError('wrong-top1', 'val-error-top1'),
              ClassificationError('wrong-top5', 'val-error-top5')]
    runner = (DataParallelInferenceRunner(val_df, errors, list(range(towers))) if towers > 1
              else InferenceRunner(val_df, errors))
    return [PeriodicTrigger(runner, every_k_epochs=every_k_epochs), MinSaver('val-error-top1')]


def resume_init(logdir):
    """Restores everything from the newest intact checkpoint in --logdir, or None without one."""
    if not saved_checkpoints(logdir):
        return None
    path = latest_intact_checkpoint(logdir)
    logger.info('Will load checkpoint at {}.'.format(path))
    return SaverRestore(path)


def get_config(args, towers, workers, is_chief, stop_on_nan, stop_request):
    """The TrainConfig of the paper's recipe; it resumes from the latest checkpoint in --logdir."""
    if args.batch % (towers * workers):
        raise UsageError('--batch {} does not split evenly over {} GPUs x {} processes'.format(
            args.batch, towers, workers))
    bad_image_log = BadImageLog()
    train_df, val_df, num_classes, num_images = get_data(args, args.batch // (towers * workers),
                                                         bad_image_log, with_val=is_chief)
    steps_per_epoch = args.steps_per_epoch or max(num_images // args.batch, 1)
    schedule = WarmupCosineSchedule(args.lr * args.batch / 256, int(args.warmup_epochs * steps_per_epoch),
                                    args.epochs * steps_per_epoch)
    watch_workers(train_df, stop_request.fail)
    saver = ModelSaver(max_to_keep=args.keep_checkpoints)
    callbacks = [saver, schedule, stop_on_nan, EstimatedTimeLeft(), ResumeAtGlobalStep(),
                 SaveAndStop(stop_request, saver, args.horovod)]
    if not args.fake:
        if is_chief:
            callbacks += validation_callbacks(val_df, towers, args.val_every)
        callbacks.append(bad_image_log)
    config = dict(model=build_model(args, num_classes), data=QueueInput(train_df), callbacks=callbacks,
                  steps_per_epoch=steps_per_epoch, max_epoch=args.epochs)
    # Horovod broadcasts rank 0's values to the other ranks; a checkpoint in --logdir wins over --load
    session_init = resume_init(args.logdir) if is_chief else None
    if session_init is None and args.load and is_chief:
        session_init = CheckedInit(args.load, fine_tune_scope=GhostNet.scope + '/Logits')
    return TrainConfig(session_init=session_init, **config)


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
    if stop_request.reason:
        raise_stopped(stop_request, trainer.loop.global_step, is_chief)
    if stop_on_nan.bad_step is not None:
        last_good = tf.train.latest_checkpoint(args.logdir)
        raise TrainingDiverged('the loss became NaN or infinite at global step {}; training stopped. {}'.format(
            stop_on_nan.bad_step, 'The last good checkpoint is {}'.format(last_good) if last_good
            else 'No checkpoint was written before it (try a lower --lr)'))
    if is_chief:
        summarize_training(trainer, args.logdir)


def raise_stopped(stop_request, global_step, is_chief):
    """TrainingStopped (a signal) or DataError (a dead worker), saying where it saved and how to resume."""
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
    logger.info('Training done at global step {}{}; checkpoints in {}'.format(
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
    num_towers(args)    # checks --gpu and --data-format
    model = build_model(args, export.checkpoint_num_classes(args.load))
    if args.export:
        export.export(model, args.load, args.export, args.tflite, args.quantize, args.representative)
    if args.predict:
        for path, top5 in export.predict(model, args.load, args.predict, args.meta_dir):
            print(path)
            print('\n'.join('  {:.4f}  {}'.format(p, name) for _, name, p in top5))


def print_flops(args):
    """Build the network at batch 1 and print its layers, parameters and multiply-adds."""
    graph = flops.inference_graph(build_model(args, IMAGENET_CLASSES))
    table = flops.layer_table(graph)
    print(tabulate(table, intfmt=',', headers=['layer', 'op', 'output shape', 'params', 'multiply-adds']))
    multiply_adds = sum(row.multiply_adds for row in table)
    profiled = flops.profiler_flops(graph)
    print('Total: {:,} parameters, {:,} multiply-adds ({:.0f}M, a multiply-add counted once as in '
          'the paper: convolutions, depthwise convolutions, SE and classifier).'.format(
              flops.total_params(graph), multiply_adds, multiply_adds / 1e6))
    print('TensorFlow profiler: {:,} float operations ({:.0f}M); it counts a multiply-add as two '
          'and adds batch norm, activations, pooling and other element-wise ops.'.format(
              profiled, profiled / 1e6))


def main(argv=None):
    """Run the mode the flags select; bad input ends with one `error: ...` line and status 1, a
    stop by a signal with one line saying how to resume and status STOPPED."""
    args = parse_args(argv)
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
    except (UsageError, DataError, CheckpointError, TrainingDiverged) as e:
        sys.exit('error: {}'.format(e))
    except TrainingStopped as e:
        print(e, file=sys.stderr)
        sys.exit(STOPPED)
    return 0


if __name__ == '__main__':
    sys.exit(main())
