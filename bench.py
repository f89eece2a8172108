"""Benchmark GhostNet against tf.keras MobileNetV3 on this machine, in one run so the numbers compare.

Per model: inference latency at batch 1 and throughput at a larger batch through the TF graph
(tensorpack for GhostNet, tf.keras in a tf.compat.v1 graph for MobileNetV3), the SavedModel
serving signature, TFLite float and int8 in LiteRT, ONNX Runtime, and the training step
throughput. All weights are random (int8 calibrates on random images).
Writes OUT.md and OUT.json.
"""
import argparse
import collections
import json
import os
import platform
import statistics
import tempfile
import time

# Every model and path stays loaded in this one process, with more oneDNN kernels than its default cache
# of 1,024 holds: some would be rebuilt at every run (GhostNet 1.0x runs 169 at one batch size).
os.environ.setdefault('ONEDNN_PRIMITIVE_CACHE_CAPACITY', '16384')

import compat  # noqa: F401,E402  (must come before TensorFlow)
import numpy as np
import onnxruntime
import tf2onnx
from ai_edge_litert.interpreter import Interpreter
import tensorflow as tf
import tensorpack
from tensorpack.tfutils.tower import TowerContext
from tensorpack.utils import logger

import export
from ghostnet import GhostNet

tfv1 = tf.compat.v1

GHOSTNET_WIDTHS = {'ghostnet-0.5': 0.5, 'ghostnet-1.0': 1.0, 'ghostnet-1.3': 1.3}
KERAS_MODELS = {'mobilenetv3-large': 'MobileNetV3Large', 'mobilenetv3-small': 'MobileNetV3Small'}
MODELS = tuple(GHOSTNET_WIDTHS) + tuple(KERAS_MODELS)
PATHS = ('graph', 'savedmodel', 'tflite', 'tflite-int8', 'onnx', 'train')
INFERENCE_PATHS = PATHS[:-1]
CALIBRATION_IMAGES = 8
NUM_CLASSES = 1000
PROFILE_TOP = 8   # op types listed per profiled model
WARMUP_CALLS = 2


# ---------------------------------------------------------------- the models

class GhostNetSubject:
    """GhostNet at a width: the tensorpack graph, and export.py's folded SavedModel."""

    def __init__(self, name, image_size):
        self.name = name
        self.model = GhostNet(NUM_CLASSES, GHOSTNET_WIDTHS[name], image_shape=image_size)

    def graph(self, training):
        """(session, image placeholder, label placeholder, train op or probabilities) in a fresh graph."""
        graph = tf.Graph()
        with graph.as_default():
            image, label = [tfv1.placeholder(spec.dtype, spec.shape, spec.name)
                            for spec in self.model.get_input_signature()]
            with TowerContext('', is_training=training):
                cost = self.model.build_graph(image, label)
            fetch = graph.get_tensor_by_name('prob:0')
            if training:
                fetch = minimize(self.model.get_optimizer(), cost)
            session = tfv1.Session(graph=graph)
            session.run(tfv1.global_variables_initializer())
        return session, image, label, fetch

    def saved_model(self, session, directory, fold_bn=True):
        """Save the session's weights and export them with export.py; returns the SavedModel path.
        `fold_bn=False` gives the graph export.py quantizes to int8."""
        with session.graph.as_default():
            checkpoint = tfv1.train.Saver().save(session, os.path.join(directory, 'model'))
        return export.export_saved_model(self.model, checkpoint, os.path.join(directory, 'saved_model'), fold_bn)

    def onnx(self, session, directory):
        """The session's weights as export.py's ONNX model; its path."""
        with session.graph.as_default():
            checkpoint = tfv1.train.Saver().save(session, os.path.join(directory, 'model'))
        return export.save_onnx(export.frozen_serving_graph(self.model, checkpoint),
                                os.path.join(directory, self.name + '.onnx'))


class KerasSubject:
    """A tf.keras.applications model with random weights, with its own [0, 255] RGB preprocessing."""

    def __init__(self, name, image_size):
        self.name = name
        self.image_size = image_size
        self.constructor = getattr(tf.keras.applications, KERAS_MODELS[name])

    def build(self):
        """A new Keras model that outputs logits."""
        return self.constructor(input_shape=(self.image_size, self.image_size, 3), weights=None,
                                classes=NUM_CLASSES, classifier_activation=None)

    def graph(self, training):
        """(session, image placeholder, label placeholder, fetch) in a fresh tf.compat.v1 graph."""
        graph = tf.Graph()
        with graph.as_default():
            network = self.build()
            image = tfv1.placeholder(tf.float32, [None, self.image_size, self.image_size, 3], 'input')
            label = tfv1.placeholder(tf.int32, [None], 'label')
            logits = network(image, training=training)
            fetch = tf.nn.softmax(logits)
            if training:
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(label, logits))
                with tf.control_dependencies(network.get_updates_for(image)):
                    fetch = tfv1.train.MomentumOptimizer(0.1, 0.9, use_nesterov=True).minimize(loss)
            session = tfv1.Session(graph=graph)
            session.run(tfv1.global_variables_initializer())
        return session, image, label, fetch

    def serving_module(self):
        """A tf.Module whose `serve` has export.py's serving signature (the weights are new random ones:
        those of `graph` live in a tf.compat.v1 graph, and fresh random ones time the same)."""
        module = tf.Module()
        module.network = self.build()
        module.serve = tf.function(lambda images: serving_outputs(module.network(
            tf.cast(images, tf.float32), training=False)), input_signature=[tf.TensorSpec(
                [None, self.image_size, self.image_size, 3], tf.uint8, name='images')])
        return module

    def saved_model(self, session, directory, fold_bn=True):
        """The serving module as a SavedModel; its path (the converter folds its batch norm)."""
        del session, fold_bn
        module, path = self.serving_module(), os.path.join(directory, 'saved_model')
        tf.saved_model.save(module, path, signatures={'serving_default': module.serve})
        return path

    def onnx(self, session, directory):
        """The serving module converted by tf2onnx as export.py converts GhostNet's; its path."""
        del session
        path = os.path.join(directory, self.name + '.onnx')
        serve = self.serving_module().serve
        tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=export.ONNX_OPSET,
                                      output_path=path)
        return path


def serving_outputs(logits):
    """The outputs of export.py's serving signature, from logits."""
    probabilities = tf.nn.softmax(logits)
    return {'probabilities': probabilities, 'top5': export.top_k_classes(logits, 5), 'logits': logits}


def minimize(optimizer, cost):
    """The training op: the optimizer's step after the batch-norm EMA updates, as tensorpack runs them."""
    with tf.control_dependencies(tfv1.get_collection(tfv1.GraphKeys.UPDATE_OPS)):
        return optimizer.minimize(cost)


def subject(name, image_size):
    """The benchmark subject for a model name."""
    if name in GHOSTNET_WIDTHS:
        return GhostNetSubject(name, image_size)
    return KerasSubject(name, image_size)


# ---------------------------------------------------------------- what is timed

def random_images(batch, size, seed=0):
    """A batch of random uint8 images [batch, size, size, 3]."""
    return np.random.RandomState(seed).randint(0, 256, (batch, size, size, 3), dtype=np.uint8)


def graph_call(session, image, fetch, images):
    """One run of a TF graph session on float images in [0, 255]."""
    feed = {image: images.astype(np.float32)}
    return lambda: session.run(fetch, feed)


def saved_model_call(signature, images):
    """One call of a SavedModel's serving signature on uint8 images."""
    images = tf.constant(images)
    return lambda: signature(images=images)


def tflite_call(path, images):
    """One invocation of a TFLite flatbuffer in LiteRT, resized to the batch, on every core."""
    interpreter = Interpreter(path, num_threads=os.cpu_count())
    index = interpreter.get_input_details()[0]['index']
    interpreter.resize_tensor_input(index, images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, images)
    return interpreter.invoke


def onnx_call(path, images):
    """One run of an ONNX model in ONNX Runtime on every core."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
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
                session, os.path.join(workdir, name + '-int8'), fold_bn=False)   # as export.export quantizes
            flatbuffer = export.export_tflite(source, os.path.join(workdir, name + path + '.tflite'), quantize,
                                              random_images(CALIBRATION_IMAGES, args.image_size, seed=1))
            calls.update({(path, b): tflite_call(flatbuffer, x) for b, x in batches.items()})
    if 'onnx' in args.paths:
        onnx_model = subject_.onnx(session, os.path.join(workdir, name))
        calls.update({('onnx', b): onnx_call(onnx_model, x) for b, x in batches.items()})
    if 'train' in args.paths:
        calls[('train', args.batch)] = training_call(subject_, args.batch, args.image_size)
    return info, calls


# ---------------------------------------------------------------- timing

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


def cell(results, model, path, metric):
    """A table cell: the metric, or '-' where it was not measured."""
    value = results[model].get(path, {}).get(metric)
    return '-' if value is None else '{:g}'.format(value)


def goal_lines(results):
    """GhostNet 1.0x against MobileNetV3Large in this run: must >= 1.0x throughput and <= 1.0x latency,
    goal 1.2x throughput (1.55x is the multiply-add ratio)."""
    if not {'ghostnet-1.0', 'mobilenetv3-large'} <= set(results):
        return []
    ghost, large = results['ghostnet-1.0'], results['mobilenetv3-large']
    lines = ['', '## GhostNet 1.0x against MobileNetV3Large', '']
    for path in INFERENCE_PATHS:
        if path in ghost and path in large:
            ratio = ghost[path]['throughput'] / large[path]['throughput']
            latency = ghost[path]['latency_ms'] / large[path]['latency_ms']
            lines.append('- {}: batch throughput {:.2f}x ({}; goal 1.2x {}), batch-1 latency {:.2f}x ({})'.format(
                path, ratio, 'at least 1.0x' if ratio >= 1.0 else 'below 1.0x', 'met' if ratio >= 1.2 else 'short',
                latency, 'at most 1.0x' if latency <= 1.0 else 'above 1.0x'))
    if 'train' in ghost and 'train' in large:
        ratio = ghost['train']['throughput'] / large['train']['throughput']
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
             'on {5} threads; oneDNN primitive cache {6} entries.'.format(
                 settings['image_size'], settings['rounds'] * settings['iters'],
                 settings['rounds'] * settings['batch_iters'], batch, settings['rounds'],
                 report['machine']['cores'], os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY']),
             '', '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for model, result in results.items():
        cells = [cell(results, model, path, metric) for path in INFERENCE_PATHS
                 for metric in ('latency_ms', 'throughput')]
        cells.append(cell(results, model, 'train', 'throughput'))
        lines.append('| ' + ' | '.join([model, '{:g}'.format(result['params_m'])] + cells) + ' |')
    return '\n'.join(lines + goal_lines(results) + profile_lines(results, batch)) + '\n'


# ---------------------------------------------------------------- command line

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


def add_timing_arguments(parser, rounds, iters, batch_iters, out):
    """--rounds, --iters, --batch-iters, --batch, --image-size and --out, with these defaults."""
    parser.add_argument('--rounds', type=int, default=rounds, help='rounds of interleaved timing')
    parser.add_argument('--iters', type=int, default=iters, help='timed batch-1 runs per call and round')
    parser.add_argument('--batch-iters', type=int, default=batch_iters,
                        help='timed large-batch runs (inference and training) per call and round')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--image-size', type=int, default=224)
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', type=comma_list(MODELS), default=list(MODELS),
                        help='comma-separated, from ' + ','.join(MODELS))
    parser.add_argument('--paths', type=comma_list(PATHS), default=list(PATHS),
                        help='comma-separated, from ' + ','.join(PATHS))
    parser.add_argument('--profile', action='store_true',
                        help='add per-op-type time of the graph path at the large batch')
    add_timing_arguments(parser, rounds=10, iters=10, batch_iters=2, out='results/bench_results')
    return parse_timing_args(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    report = {'machine': machine(), 'settings': {key: getattr(args, key) for key in (
        'models', 'paths', 'rounds', 'iters', 'batch_iters', 'batch', 'image_size')}, 'results': {}}
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
