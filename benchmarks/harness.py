"""What every benchmark shares: random inputs, timing in interleaved rounds, the machine, the flags
for timing, and report writing (OUT.md and OUT.json, by default in benchmarks/results/)."""
import argparse
import collections
import json
import os
import platform
import time

import compat  # noqa: F401  (must come before TensorFlow)
import numpy as np
import tensorflow as tf
import tensorpack
from ai_edge_litert.interpreter import Interpreter
from tensorpack.utils import logger

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
WARMUP_CALLS = 2
# oneDNN's primitive cache holds 1,024 kernels by default; a benchmark that keeps several models loaded in
# one process needs more, or some are rebuilt at every run (GhostNet 1.0x runs 169 at one batch size)
ONEDNN_PRIMITIVE_CACHE = '16384'


def hold_every_kernel():
    """Enlarge oneDNN's primitive cache for the models a benchmark loads (before the first one runs)."""
    os.environ.setdefault('ONEDNN_PRIMITIVE_CACHE_CAPACITY', ONEDNN_PRIMITIVE_CACHE)


def result_path(name):
    """The default OUT of a report: benchmarks/results/NAME."""
    return os.path.join(RESULTS_DIR, name)


def random_images(batch, size, seed=0):
    """A batch of random uint8 images [batch, size, size, 3]."""
    return np.random.RandomState(seed).randint(0, 256, (batch, size, size, 3), dtype=np.uint8)


def tflite_call(path, images, threads):
    """One invocation of a TFLite flatbuffer in LiteRT on `threads` threads, resized to the batch."""
    interpreter = Interpreter(path, num_threads=threads)
    index = interpreter.get_input_details()[0]['index']
    interpreter.resize_tensor_input(index, images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, images)
    return interpreter.invoke


def thread_phrase(count):
    """'1 thread', '2 threads': a thread count as the reports say it."""
    return '{} thread{}'.format(count, '' if count == 1 else 's')


def timed(call, count):
    """Wall times of `count` calls."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def time_interleaved(calls, args):
    """{key: [seconds]}: every call timed in turn (in the order of `calls`), round after round, so
    background load hits all alike."""
    for call in calls.values():
        timed(call, WARMUP_CALLS)
    samples = collections.defaultdict(list)
    for round_ in range(args.rounds):
        for key, call in calls.items():
            samples[key] += timed(call, args.iters if key[-1] == 1 else args.batch_iters)
        logger.info('Timing round {}/{} done'.format(round_ + 1, args.rounds))
    return samples


def cpu_model():
    """The CPU model name from /proc/cpuinfo, else what the platform module says."""
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor() or 'unknown CPU'


def machine():
    """CPU model, cores and library versions."""
    return {'cpu': cpu_model(), 'cores': os.cpu_count(), 'usable_cores': len(os.sched_getaffinity(0)),
            'platform': platform.platform(), 'python': platform.python_version(),
            'tensorflow': tf.__version__, 'tensorpack': tensorpack.__version__,
            'gpus': len(tf.config.list_physical_devices('GPU'))}


def comma_list(choices):
    """An argparse type: a comma-separated subset of `choices`."""
    def parse(text):
        items = [item for item in text.split(',') if item]
        unknown = set(items) - set(choices)
        if unknown:
            raise argparse.ArgumentTypeError('unknown {}; choose from {}'.format(
                ', '.join(sorted(unknown)), ', '.join(choices)))
        return items
    return parse


def thread_count(text):
    """An argparse type: a thread count, at least 1."""
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError('must be at least 1, not {}'.format(count))
    return count


def thread_counts(text):
    """An argparse type: one or more comma-separated thread counts, each at least 1."""
    counts = [thread_count(item) for item in text.split(',') if item]
    if not counts:
        raise argparse.ArgumentTypeError('names no thread count')
    return counts


def add_timing_arguments(parser, rounds, iters, batch_iters, out, several_threads=False):
    """--rounds, --iters, --batch_iters, --batch, --image_size, --threads and --out, with these defaults; with
    `several_threads`, --threads takes a comma-separated list of counts, all timed in the same rounds."""
    parser.add_argument('--rounds', type=int, default=rounds, help='rounds of interleaved timing')
    parser.add_argument('--iters', type=int, default=iters, help='timed batch-1 runs per call and round')
    parser.add_argument('--batch_iters', type=int, default=batch_iters,
                        help='timed large-batch runs (inference and training) per call and round')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--image_size', type=int, default=224)
    usable_cores = len(os.sched_getaffinity(0))
    if several_threads:
        parser.add_argument('--threads', type=thread_counts, default=[usable_cores],
                            help='comma-separated thread counts of LiteRT, each timed in the same rounds '
                                 '(default: every core this process may use)')
    else:
        parser.add_argument('--threads', type=thread_count, default=usable_cores,
                            help='threads of LiteRT and ONNX Runtime (default: every core this process may use)')
    parser.add_argument('--out', default=out, help='writes OUT.md and OUT.json')


def parse_timing_args(parser, argv):
    """The parsed flags; batch 1 is always timed, so --batch must be larger."""
    args = parser.parse_args(argv)
    if args.batch < 2:
        parser.error('--batch must be at least 2 (batch 1 is always timed for latency)')
    return args


def write_report(report, out, text):
    """OUT.json (the report) and OUT.md (`text`)."""
    with open(out + '.json', 'w') as f:
        json.dump(report, f, indent=1)
    with open(out + '.md', 'w') as f:
        f.write(text)
