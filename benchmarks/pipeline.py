#!/usr/bin/env python
"""Where the time goes in evaluation and training on this machine: the data pipeline or the model.

    python -m benchmarks.pipeline [--width_ratio 1.0] [--image_size 224] [--batch 32]

Writes a sample of ImageNet-sized JPEGs (shorter side about 300-500 px) to a temporary folder and
measures, in images per second:
  evaluation: decoding + resizing alone (the val dataflow), the model alone (fixed batches of the
              tensorpack graph in inference mode, and of the exported SavedModel), and
              `main.py --eval` end to end;
  training:   decoding + augmenting alone (the training dataflow), a training step alone
              (`main.py --fake`), and training on the JPEGs (`main.py --data_dir`).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import compat  # noqa: F401  (must come before TensorFlow)
import numpy as np
import tensorflow as tf
from tensorpack.predict import PredictConfig
from tensorpack.tfutils.tower import TowerContext

from deploy import export
from runtime.command_line import FlagParser
from benchmarks.harness import machine, result_path, write_report
from ghostnet import GhostNet
from runtime.callbacks import BadImageLog
from imagenet_utils import batch_predictors, get_train_dataflow, get_val_dataflow, list_train_images, list_val_images
from data.samples import write_sample_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_CLASSES = 8
tfv1 = tf.compat.v1
UNIT_SECONDS = {'day': 86400, 'hour': 3600, 'minute': 60, 'second': 1}  # tensorpack: "1 minute 3 seconds"


def images_per_second(dataflow, batches):
    """Rate at which `dataflow` yields images, over `batches` batches after a first warm-up one."""
    dataflow.reset_state()
    iterator = iter(dataflow)
    next(iterator)
    start, count = time.perf_counter(), 0
    for _ in range(batches):
        count += len(next(iterator)[1])
    return count / (time.perf_counter() - start)


def model_rate(args, batches):
    """Inference images per second of the tensorpack graph `--eval` runs, on fixed uint8 batches."""
    model = GhostNet(num_classes=1000, width=args.width_ratio, image_shape=args.image_size)
    predictor, = batch_predictors(PredictConfig(model=model, input_names=['input'], output_names=['prob']))
    images = np.random.RandomState(0).randint(0, 256, (args.batch, args.image_size, args.image_size, 3))
    images = images.astype(np.float32)
    predictor(images)
    start = time.perf_counter()
    for _ in range(batches):
        predictor(images)
    return batches * args.batch / (time.perf_counter() - start)


def saved_model_rate(args, workdir, batches):
    """Images per second of the exported SavedModel's serving signature on fixed uint8 batches."""
    model = GhostNet(num_classes=1000, width=args.width_ratio, image_shape=args.image_size)
    with tf.Graph().as_default(), tfv1.Session() as sess:
        build = [tfv1.placeholder(spec.dtype, spec.shape, spec.name) for spec in model.get_input_signature()]
        with TowerContext('', is_training=False):
            model.build_graph(*build)
        sess.run(tfv1.global_variables_initializer())
        checkpoint = tfv1.train.Saver().save(sess, os.path.join(workdir, 'model'))
    directory = export.export_saved_model(model, checkpoint, os.path.join(workdir, 'saved_model'))
    serve = tf.saved_model.load(directory).signatures['serving_default']
    images = tf.constant(np.random.RandomState(0).randint(0, 256, (args.batch, args.image_size,
                                                                   args.image_size, 3), dtype=np.uint8))
    serve(images=images)
    start = time.perf_counter()
    for _ in range(batches):
        serve(images=images)
    return batches * args.batch / (time.perf_counter() - start)


def run_main(*flags):
    """main.py's output (stdout and stderr), which must succeed."""
    run = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *flags], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if run.returncode:
        sys.exit('main.py {} failed:\n{}'.format(' '.join(flags), run.stdout[-3000:]))
    return run.stdout


def eval_end_to_end(args, data_dir):
    """`main.py --eval` images per second, as it reports them."""
    output = run_main('--eval', '--data_dir', data_dir, *model_flags(args))
    return float(re.search(r'Evaluated \d+ images in [\d.]+ s \(([\d.]+) images/s\)', output).group(1))


def training_rate(args, logdir, *data_flags):
    """Training images per second in the second of two epochs (the first warms up)."""
    output = run_main(*data_flags, '--logdir', logdir, '--epochs', '2', '--steps_per_epoch',
                      str(args.train_steps), '--val_every', '1000', *model_flags(args))
    duration = re.findall(r'Epoch 2 \(global_step \d+\) finished, time:(.*)\.$', output, re.M)[-1]
    seconds = sum(float(value) * UNIT_SECONDS[unit]
                  for value, unit in re.findall(r'([\d.]+) (day|hour|minute|second)', duration))
    with open(os.path.join(logdir, 'stats.json')) as f:
        queue = json.load(f)[-1].get('QueueInput/queue_size')
    return args.train_steps * args.batch / seconds, queue


def model_flags(args):
    return ['--width_ratio', str(args.width_ratio), '--image_size', str(args.image_size),
            '--batch', str(args.batch), '--workers', str(args.workers)]


def measure(args, workdir):
    """{measurement: images per second} for evaluation and training."""
    data_dir = os.path.join(workdir, 'data')
    per_class = max(args.images // SAMPLE_CLASSES, 1)
    write_sample_dataset(data_dir, num_classes=SAMPLE_CLASSES, train_per_class=per_class,
                         val_per_class=per_class, image_size=400)
    meta_dir = os.path.join(data_dir, 'caffe_ilsvrc12')
    batches = max(args.images // args.batch - 1, 1)
    val = get_val_dataflow(list_val_images(data_dir, meta_dir), args.batch, args.image_size, args.workers)
    train = get_train_dataflow(list_train_images(data_dir, meta_dir), args.batch, BadImageLog(),
                               args.image_size, workers=args.workers)
    results = {
        'eval: decode + resize + crop': images_per_second(val, batches),
        'eval: model alone (tensorpack graph)': model_rate(args, batches),
        'eval: model alone (exported SavedModel)': saved_model_rate(args, workdir, batches),
        'eval: main.py --eval end to end': eval_end_to_end(args, data_dir),
        'train: decode + augment': images_per_second(train, batches),
    }
    results['train: step alone (--fake)'], fake_queue = training_rate(
        args, os.path.join(workdir, 'fake'), '--fake')
    results['train: on JPEGs'], jpeg_queue = training_rate(
        args, os.path.join(workdir, 'jpeg'), '--data_dir', data_dir)
    return results, {'fake': fake_queue, 'jpeg': jpeg_queue}


def markdown(report):
    host = report['machine']
    lines = ['# Evaluation and training pipeline', '',
             'Machine: {cpu}, {usable_cores} cores, {gpus} GPUs; TensorFlow {tensorflow}.'.format(**host),
             'GhostNet {}x at {}x{}, batch {}, {} decoding workers; JPEGs with shorter sides of about '
             '300-500 px.'.format(report['width'], report['image_size'], report['image_size'],
                                  report['batch'], report['workers']), '',
             '| measurement | images/s |', '|---|---|']
    lines += ['| {} | {:.1f} |'.format(name, rate) for name, rate in report['results'].items()]
    results = report['results']
    lines += ['', '`--eval` end to end runs at {:.2f}x the exported SavedModel alone (must: at least 0.7x).'.format(
        results['eval: main.py --eval end to end'] / results['eval: model alone (exported SavedModel)'])]
    lines += ['', 'Training input queue (of 50) at the end: --fake {:.0f}, JPEGs {:.0f}: a queue that '
                  'stays near empty means the step waits for data.'.format(
                      *(report['queue'][k] for k in ('fake', 'jpeg')))]
    return '\n'.join(lines) + '\n'


def parse_args(argv=None):
    parser = FlagParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--width_ratio', type=float, default=1.0)
    parser.add_argument('--image_size', type=int, default=224)
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--images', type=int, default=1024, help='JPEGs written per split')
    parser.add_argument('--train_steps', type=int, default=8, help='timed training steps')
    parser.add_argument('--out', default=result_path('bench_pipeline'), help='writes OUT.md and OUT.json')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        results, queue = measure(args, workdir)
    report = dict(machine=machine(), width=args.width_ratio, image_size=args.image_size,
                  batch=args.batch, workers=args.workers, results=results, queue=queue)
    write_report(report, args.out, markdown(report))
    print(markdown(report))


if __name__ == '__main__':
    main()
