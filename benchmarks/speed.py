"""Benchmark GhostNet against tf.keras MobileNetV3 on this machine, in one run so the numbers compare.

    python -m benchmarks.speed [--models ghostnet-1.0,mobilenetv3-large] [--paths tflite,onnx]

Per model: inference latency at batch 1 and throughput at a larger batch through the TF graph
(tensorpack for GhostNet, tf.keras in a tf.compat.v1 graph for MobileNetV3), the SavedModel
serving signature, TFLite float and int8 in LiteRT, ONNX Runtime, and the training step
throughput. All weights are random (int8 calibrates on random images).
Writes OUT.md and OUT.json (default benchmarks/results/bench_results).
"""
import collections
import os
import statistics
import tempfile
import time

import compat  # noqa: F401  (must come before TensorFlow)
import numpy as np
import onnxruntime
import tensorflow as tf
from tensorpack.utils import logger

from runtime.command_line import FlagParser
from benchmarks.harness import (WARMUP_CALLS, add_timing_arguments, comma_list, hold_every_kernel, machine,
                                parse_timing_args, random_images, result_path, time_interleaved, timed,
                                thread_phrase, tflite_call, write_report)
from benchmarks.subjects import MODELS, NUM_CLASSES, subject
from deploy import export

tfv1 = tf.compat.v1

PATHS = ('graph', 'savedmodel', 'tflite', 'tflite-int8', 'onnx', 'train')
INFERENCE_PATHS = PATHS[:-1]
CALIBRATION_IMAGES = 8
PROFILE_TOP = 8   # op types listed per profiled model


# ---------------------------------------------------------------- what is timed


def graph_call(session, image, fetch, images):
    """One run of a TF graph session on float images in [0, 255]."""
    feed = {image: images.astype(np.float32)}
    return lambda: session.run(fetch, feed)


def saved_model_call(signature, images):
    """One call of a SavedModel's serving signature on uint8 images."""
    images = tf.constant(images)
    return lambda: signature(images=images)


def onnx_call(path, images, threads):
    """One run of an ONNX model in ONNX Runtime on `threads` threads."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # its threads would otherwise spin on after each run, taking the cores from the path timed next
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    session = onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    return lambda: session.run(None, {'images': images})


def training_call(subject_, batch, image_size):
    """One training step at `batch` (optimizer and batch-norm updates) of a fresh training graph."""
    session, image, label, train_op = subject_.graph(training=True)
    feed = {image: random_images(batch, image_size).astype(np.float32),
            label: np.arange(batch) % NUM_CLASSES}
    return lambda: session.run(train_op, feed)


def op_type_profile(session, image, fetch, images):
    """Traced op time per op type for one run: [(op type, ms, percent)], largest first."""
    metadata = tfv1.RunMetadata()
    feed = {image: images.astype(np.float32)}
    session.run(fetch, feed, options=tfv1.RunOptions(trace_level=tfv1.RunOptions.FULL_TRACE),
                run_metadata=metadata)
    micros = collections.Counter()
    for device in metadata.step_stats.dev_stats:
        for node in device.node_stats:
            label = node.timeline_label
            micros[label.split(' = ')[1].split('(')[0] if ' = ' in label else node.node_name] += \
                node.all_end_rel_micros
    total = sum(micros.values())
    return [(op, round(us / 1e3, 1), round(100 * us / total, 1))
            for op, us in micros.most_common(PROFILE_TOP)]


def parameter_count(session):
    """Trainable parameters in a session's graph."""
    with session.graph.as_default():
        return int(sum(np.prod(v.shape) for v in tfv1.trainable_variables()))


def prepare_model(name, args, workdir):
    """({'params_m', ['profile']}, {(path, batch): call}) for one model and the requested paths."""
    subject_ = subject(name, args.image_size)
    batches = {batch: random_images(batch, args.image_size) for batch in (1, args.batch)}
    session, image, _, probabilities = subject_.graph(training=False)
    info = {'params_m': round(parameter_count(session) / 1e6, 2)}
    calls = {}
    if 'graph' in args.paths:
        calls.update({('graph', b): graph_call(session, image, probabilities, x) for b, x in batches.items()})
    if args.profile:
        timed(graph_call(session, image, probabilities, batches[args.batch]), WARMUP_CALLS)
        info['profile'] = op_type_profile(session, image, probabilities, batches[args.batch])
    if {'savedmodel', 'tflite', 'tflite-int8'} & set(args.paths):
        saved_model = subject_.saved_model(session, os.path.join(workdir, name))
    if 'savedmodel' in args.paths:
        signature = tf.saved_model.load(saved_model).signatures['serving_default']
        calls.update({('savedmodel', b): saved_model_call(signature, x) for b, x in batches.items()})
    for path, quantize in (('tflite', 'none'), ('tflite-int8', 'int8')):
        if path in args.paths:
            source = saved_model if quantize == 'none' else subject_.saved_model(
                session, os.path.join(workdir, name + '-int8'), int8=True)   # as export.export quantizes
            flatbuffer = export.export_tflite(source, os.path.join(workdir, name + path + '.tflite'), quantize,
                                              random_images(CALIBRATION_IMAGES, args.image_size, seed=1))
            calls.update({(path, b): tflite_call(flatbuffer, x, args.threads) for b, x in batches.items()})
    if 'onnx' in args.paths:
        onnx_model = subject_.onnx(session, os.path.join(workdir, name))
        calls.update({('onnx', b): onnx_call(onnx_model, x, args.threads) for b, x in batches.items()})
    if 'train' in args.paths:
        calls[('train', args.batch)] = training_call(subject_, args.batch, args.image_size)
    return info, calls


# ---------------------------------------------------------------- timing


def speeds(samples):
    """{path: metrics} of one model from its samples: batch-1 latency, batch throughput; median and best."""
    result = collections.defaultdict(dict)
    for (path, batch), times in samples.items():
        if batch == 1:
            result[path].update(latency_ms=round(statistics.median(times) * 1e3, 2),
                                best_latency_ms=round(min(times) * 1e3, 2))
        else:
            result[path].update(throughput=round(batch / statistics.median(times), 1),
                                best_throughput=round(batch / min(times), 1))
    return dict(result)


# ---------------------------------------------------------------- report


def cell(results, model, path, metric):
    """A table cell: the metric, or '-' where it was not measured."""
    value = results[model].get(path, {}).get(metric)
    return '-' if value is None else '{:g}'.format(value)


# model -> (least batch throughput, goal throughput, most batch-1 latency, goal latency) against MobileNetV3Large,
# as ratios measured in one run: GhostNet 1.0x's (1.55x is the multiply-add ratio), GhostNetV2 1.0x's in LiteRT
GOALS = {'ghostnet-1.0': (1.0, 1.2, 1.0, 1.0), 'ghostnetv2-1.0': (0.9, 1.0, 1.1, 1.0)}
BASELINE = 'mobilenetv3-large'


def goal_lines(results):
    """Each model of GOALS against MobileNetV3Large in this run, path by path: its throughput and latency ratios
    against the bounds and the goals."""
    lines = []
    for name, goal in GOALS.items():
        if {name, BASELINE} <= set(results):
            lines += ['', '## {} against MobileNetV3Large'.format(name), ''] + ratio_lines(
                results[name], results[BASELINE], *goal)
    return lines


def ratio_lines(model, baseline, least_throughput, goal_throughput, most_latency, goal_latency):
    """The throughput and latency ratios of `model` to `baseline` on every path both ran."""
    lines = []
    for path in INFERENCE_PATHS:
        if path in model and path in baseline:
            ratio = model[path]['throughput'] / baseline[path]['throughput']
            latency = model[path]['latency_ms'] / baseline[path]['latency_ms']
            lines.append('- {}: batch throughput {:.2f}x ({} {:g}x; goal {:g}x {}), batch-1 latency {:.2f}x ({} {:g}x; '
                         'goal {:g}x {})'.format(
                             path, ratio, 'at least' if ratio >= least_throughput else 'below', least_throughput,
                             goal_throughput, 'met' if ratio >= goal_throughput else 'short', latency,
                             'at most' if latency <= most_latency else 'above', most_latency, goal_latency,
                             'met' if latency <= goal_latency else 'short'))
    if 'train' in model and 'train' in baseline:
        ratio = model['train']['throughput'] / baseline['train']['throughput']
        lines.append('- training: throughput {:.2f}x ({}; goal >= 1.0x)'.format(
            ratio, 'met' if ratio >= 1.0 else 'short'))
    return lines


def profile_lines(results, batch):
    """Per model, the op types that took the most traced time in the graph at the batch size."""
    lines = []
    for model, result in results.items():
        if 'profile' in result:
            lines += ['', '### {} graph, batch {}: op types by traced time'.format(model, batch), '',
                      '| op type | ms | share |', '|---|---|---|']
            lines += ['| {} | {:g} | {:g}% |'.format(*row) for row in result['profile']]
    return lines


def markdown(report):
    """The report as Markdown: machine, settings, one table row per model, goals, profiles."""
    settings, results = report['settings'], report['results']
    batch = settings['batch']
    header = ['model', 'params (M)'] + ['{} {}'.format(path, unit) for path in INFERENCE_PATHS
                                        for unit in ('b1 ms', 'b{} img/s'.format(batch))]
    header.append('train b{} img/s'.format(batch))
    lines = ['# GhostNet benchmark', '',
             'Machine: {cpu}, {cores} cores ({usable_cores} usable), {platform}; Python {python}, '
             'TensorFlow {tensorflow}, tensorpack {tensorpack}, GPUs: {gpus}.'.format(**report['machine']),
             'Load average (1 min) at start and end: {:.2f}, {:.2f}.'.format(*report['load_average']),
             'Settings: {0}x{0} input, random weights; medians of {1} batch-1 and {2} batch-{3} runs, '
             'timed in {4} rounds in which every model and path takes its turn; graph = tensorpack '
             '(GhostNet) or tf.keras in a tf.compat.v1 graph (MobileNetV3); TFLite (LiteRT) and ONNX Runtime '
             'on {5}; oneDNN primitive cache {6} entries.'.format(
                 settings['image_size'], settings['rounds'] * settings['iters'],
                 settings['rounds'] * settings['batch_iters'], batch, settings['rounds'],
                 thread_phrase(settings['threads']), os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY']),
             '', '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for model, result in results.items():
        cells = [cell(results, model, path, metric) for path in INFERENCE_PATHS
                 for metric in ('latency_ms', 'throughput')]
        cells.append(cell(results, model, 'train', 'throughput'))
        lines.append('| ' + ' | '.join([model, '{:g}'.format(result['params_m'])] + cells) + ' |')
    return '\n'.join(lines + goal_lines(results) + profile_lines(results, batch)) + '\n'


# ---------------------------------------------------------------- command line


def parse_args(argv=None):
    parser = FlagParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', type=comma_list(MODELS), default=list(MODELS),
                        help='comma-separated, from ' + ','.join(MODELS))
    parser.add_argument('--paths', type=comma_list(PATHS), default=list(PATHS),
                        help='comma-separated, from ' + ','.join(PATHS))
    parser.add_argument('--profile', action='store_true',
                        help='add per-op-type time of the graph path at the large batch')
    add_timing_arguments(parser, rounds=10, iters=10, batch_iters=2, out=result_path('bench_results'))
    return parse_timing_args(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    hold_every_kernel()
    report = {'machine': machine(), 'settings': {key: getattr(args, key) for key in (
        'models', 'paths', 'rounds', 'iters', 'batch_iters', 'batch', 'image_size', 'threads')}, 'results': {}}
    start, load_at_start = time.time(), os.getloadavg()[0]
    calls = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            report['results'][name], model_calls = prepare_model(name, args, workdir)
            calls.update({(name,) + key: call for key, call in model_calls.items()})
        # path after path, each path's models back to back: the models compared on a path run after the same runtime
        samples = time_interleaved(dict(sorted(calls.items(), key=lambda item: (
            PATHS.index(item[0][1]), item[0][2], MODELS.index(item[0][0])))), args)
    for name in args.models:
        report['results'][name].update(speeds({key[1:]: times for key, times in samples.items()
                                               if key[0] == name}))
    report['seconds'] = round(time.time() - start)
    report['load_average'] = [load_at_start, os.getloadavg()[0]]
    write_report(report, args.out, markdown(report))
    logger.info('Wrote {0}.md and {0}.json in {1} s:\n{2}'.format(args.out, report['seconds'],
                                                                 markdown(report)))


if __name__ == '__main__':
    main()
