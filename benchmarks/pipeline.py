#!/usr/bin/env python
"""`main.py --eval` end to end against the network alone, on this machine, in one run so the numbers compare.

    python -m benchmarks.pipeline [--images 2048] [--rounds 5] [--batch 32] [--workers N]

Writes a sample of ImageNet-sized JPEGs (shorter sides of about 300-500 px) to a temporary folder, exports a
randomly initialized GhostNet 1.0x as a SavedModel, then times in interleaved rounds (each round runs every
subject once, in turn, so that background load hits them alike):
  eval: decode + resize + crop   the val dataflow alone;
  eval: SavedModel at --batch    the exported SavedModel's serving signature on fixed uint8 batches, over as
                                 many images as --eval sees;
  eval: --eval at --batch        main.py's evaluation with --load, in a process of its own as a user runs
                                 it (benchmarks/eval_once.py, which writes its result as JSON);
  eval: --eval at batch 256      the same at main.py's default evaluation batch.
For --eval the rate is its steady one (after the first batch, whose cost, the graph's first run, is reported
apart). During every timed loop the CPU is sampled from /proc/stat (the idle share of all cores) and
/proc/<pid>/stat (the share the measured process and its data workers used).
Writes OUT.md and OUT.json (default benchmarks/results/bench_pipeline).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import compat  # noqa: F401  (must come before TensorFlow)
import tensorflow as tf
from tensorpack.tfutils.tower import TowerContext
from tensorpack.utils import logger

from benchmarks.harness import hold_every_kernel, machine, random_images, result_path, write_report
from imagenet_utils import EVAL_BATCH
from runtime.command_line import FlagParser
from data.samples import write_sample_dataset
from deploy import export
from ghostnet import GhostNet
from imagenet_utils import get_val_dataflow, list_val_images

tfv1 = tf.compat.v1
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_CLASSES = 8
SAMPLE_EVERY = 0.05     # seconds between CPU samples
CLOCK_TICKS = os.sysconf('SC_CLK_TCK')
DECODE, SAVED_MODEL = 'eval: decode + resize + crop', 'eval: SavedModel alone'


class CPUSampler:
    """Samples, every SAMPLE_EVERY seconds in a thread, the idle and all jiffies of all cores and the CPU time of
    this process and its descendants: the shares of a time window, afterwards."""

    def __init__(self):
        self.samples = []     # (perf_counter, idle jiffies, all jiffies, this process tree's jiffies)
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self):
        while self.running:
            self.samples.append((time.perf_counter(),) + system_jiffies() + (process_tree_jiffies(os.getpid()),))
            time.sleep(SAMPLE_EVERY)

    def stop(self):
        self.running = False
        self.thread.join()

    def shares(self, start, end):
        """(idle share of all cores, share of all cores this process tree used) between two perf_counter times."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return float('nan'), float('nan')
        (t0, idle0, all0, own0), (t1, idle1, all1, own1) = inside[0], inside[-1]
        return (idle1 - idle0) / (all1 - all0), (own1 - own0) / CLOCK_TICKS / ((t1 - t0) * os.cpu_count())


def system_jiffies():
    """(idle + iowait, all) jiffies of the `cpu` line of /proc/stat."""
    with open('/proc/stat') as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return values[3] + values[4], sum(values[:8])


def process_tree_jiffies(pid):
    """User + system jiffies of process `pid` (all its threads) and of its live descendants; 0 once it ended."""
    try:
        with open('/proc/{}/stat'.format(pid)) as f:
            fields = f.read().rsplit(')', 1)[1].split()
        children = [int(child) for task in os.listdir('/proc/{}/task'.format(pid))
                    for child in read_or_empty('/proc/{}/task/{}/children'.format(pid, task)).split()]
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12]) + sum(process_tree_jiffies(child) for child in children)


def read_or_empty(path):
    """The text of a /proc file, or '' when its task ended meanwhile."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ''


def export_random_model(workdir, image_size):
    """(checkpoint prefix, SavedModel directory) of a randomly initialized GhostNet 1.0x."""
    model = GhostNet(num_classes=1000, image_shape=image_size)
    with tf.Graph().as_default(), tfv1.Session() as sess:
        inputs = [tfv1.placeholder(spec.dtype, spec.shape, spec.name) for spec in model.get_input_signature()]
        with TowerContext('', is_training=False):
            model.build_graph(*inputs)
        sess.run(tfv1.global_variables_initializer())
        checkpoint = tfv1.train.Saver().save(sess, os.path.join(workdir, 'model'))
    return checkpoint, export.export_saved_model(model, checkpoint, os.path.join(workdir, 'saved_model'))


def time_saved_model(serve, images, batches, sampler):
    """(images per second, CPU shares) of the serving signature on `batches` runs of the same batch."""
    start = time.perf_counter()
    for _ in range(batches):
        serve(images=images)
    end = time.perf_counter()
    return dict(rate=batches * len(images) / (end - start), shares=sampler.shares(start, end))


def time_decoding(examples, args, sampler):
    """(images per second, CPU shares) of the val dataflow alone over every example."""
    dataflow = get_val_dataflow(examples, args.batch, args.image_size, args.workers)
    dataflow.reset_state()
    start, count = time.perf_counter(), 0
    for _, labels in dataflow:
        count += len(labels)
    end = time.perf_counter()
    del dataflow
    return dict(rate=count / (end - start), shares=sampler.shares(start, end))


def time_eval(flags, workdir, sampler):
    """--eval's steady rate, first batch and CPU shares after its first batch, in a process of its own."""
    out = os.path.join(workdir, 'eval_result.json')
    subprocess.run([sys.executable, '-m', 'benchmarks.eval_once', out, *flags], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        result = json.load(f)
    steady_start = result['started'] + result['first_seconds']
    return dict(rate=result['rate'], first_seconds=result['first_seconds'], first_images=result['first_images'],
                shares=sampler.shares(steady_start, result['started'] + result['seconds']))


def subjects(args, workdir, data_dir, checkpoint, saved_model, examples):
    """{name: call giving a measurement} in the order a round runs them."""
    serve = tf.saved_model.load(saved_model).signatures['serving_default']
    images = tf.constant(random_images(args.batch, args.image_size))
    serve(images=images)    # its first run: graph optimization and kernel creation
    eval_flags = ['--eval', '--data_dir', data_dir, '--load', checkpoint, '--image_size', str(args.image_size),
                  '--workers', str(args.workers)]
    return {
        DECODE: lambda sampler: time_decoding(examples, args, sampler),
        eval_name(args.batch): lambda sampler: time_eval(eval_flags + ['--batch', str(args.batch)], workdir,
                                                                 sampler),
        SAVED_MODEL: lambda sampler: time_saved_model(serve, images, len(examples) // args.batch, sampler),
        eval_name(EVAL_BATCH): lambda sampler: time_eval(eval_flags, workdir, sampler),
    }


def eval_name(batch):
    return 'eval: --eval end to end at batch {}'.format(batch)


def measure(args, workdir):
    """{subject: [measurement per round]}."""
    data_dir = os.path.join(workdir, 'data')
    write_sample_dataset(data_dir, num_classes=SAMPLE_CLASSES, train_per_class=1,
                         val_per_class=max(args.images // SAMPLE_CLASSES, 1), image_size=400, metadata_classes=1000)
    examples = list_val_images(data_dir, os.path.join(data_dir, 'caffe_ilsvrc12'))
    checkpoint, saved_model = export_random_model(workdir, args.image_size)
    calls = subjects(args, workdir, data_dir, checkpoint, saved_model, examples)
    rounds = {name: [] for name in calls}
    sampler = CPUSampler()
    for number in range(args.rounds):
        for name, call in calls.items():
            rounds[name].append(call(sampler))
        logger.info('Round {}/{} done'.format(number + 1, args.rounds))
    sampler.stop()
    return rounds


def summary(rounds):
    """{subject: best, median, min and max rate over the rounds, and the round with the best rate's figures}."""
    result = {}
    for name, measurements in rounds.items():
        rates = [m['rate'] for m in measurements]
        best = max(measurements, key=lambda m: m['rate'])
        result[name] = dict(best=best['rate'], median=statistics.median(rates), low=min(rates), high=max(rates),
                            idle=best['shares'][0], own_cpu=best['shares'][1],
                            first_seconds=best.get('first_seconds'), first_images=best.get('first_images'))
    return result


def markdown(report):
    host, figures = report['machine'], report['summary']
    saved = figures[SAVED_MODEL]
    lines = ['# `--eval` end to end against the network alone', '',
             'Machine: {cpu}, {usable_cores} cores, {gpus} GPUs; TensorFlow {tensorflow}.'.format(**host),
             'GhostNet 1.0x (random weights) at {0}x{0}; {1} JPEGs with shorter sides of about 300-500 px; {2} '
             'decoding workers; {3} interleaved rounds (each runs every subject once, in turn). Rates in images/s; '
             'idle: share of all cores idle during the timed loop (/proc/stat: other processes on the machine count '
             'as busy); own CPU: share of all cores the measured process and its data workers used.'.format(
                 report['image_size'], report['images'], report['workers'], report['rounds']), '',
             '| subject | best | median | lowest | x SavedModel (best / median) | idle | own CPU | first batch |',
             '|---|---|---|---|---|---|---|---|']
    for name, f in figures.items():
        first = '{} images in {:.2f} s'.format(f['first_images'], f['first_seconds']) if f['first_seconds'] else '-'
        lines.append('| {} | {:.1f} | {:.1f} | {:.1f} | {:.2f} / {:.2f} | {:.0%} | {:.0%} | {} |'.format(
            name, f['best'], f['median'], f['low'], f['best'] / saved['best'], f['median'] / saved['median'],
            f['idle'], f['own_cpu'], first))
    lines += ['', 'Each figure of a subject is from its best round; the --eval rates leave out the first batch (the '
                  'graph\'s first run: graph optimization and kernel creation, and the pipeline filling), which the '
                  'last column gives. Must: at least 0.8x the SavedModel at both batches; goal 0.9x, at most 10% '
                  'idle.']
    return '\n'.join(lines) + '\n'


def parse_args(argv=None):
    parser = FlagParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--image_size', type=int, default=224)
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--images', type=int, default=2048, help='JPEGs evaluated in every run')
    parser.add_argument('--rounds', type=int, default=5, help='interleaved rounds')
    parser.add_argument('--out', default=result_path('bench_pipeline'), help='writes OUT.md and OUT.json')
    args = parser.parse_args(argv)
    if args.images < 2 * EVAL_BATCH:
        parser.error('--images must be at least {}: two batches at --eval\'s default batch'.format(
            2 * EVAL_BATCH))
    return args


def run_benchmark(argv=None):
    args = parse_args(argv)
    hold_every_kernel()
    with tempfile.TemporaryDirectory() as workdir:
        rounds = measure(args, workdir)
    report = dict(machine=machine(), image_size=args.image_size, images=args.images, batch=args.batch,
                  workers=args.workers, rounds=args.rounds, measurements=rounds, summary=summary(rounds))
    text = markdown(report)
    write_report(report, args.out, text)
    print(text)


if __name__ == '__main__':
    run_benchmark()
