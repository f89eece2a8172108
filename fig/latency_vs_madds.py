#!/usr/bin/env python
"""Figure: batch-1 latency against multiply-adds of GhostNet and MobileNetV3, from a benchmarks/speed.py JSON.

    python fig/latency_vs_madds.py --bench benchmarks/results/bench_results.json --out fig/latency_vs_madds.png

One panel per inference path of the report (tensorpack graph, SavedModel, TFLite float and int8 in
LiteRT, ONNX Runtime); a marker at the median
latency, a bar down to the best. Multiply-adds are counted by flops.py at the benchmark's input
size: GhostNet on its tensorpack graph, MobileNetV3 on the tf.keras model traced at batch 1.
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import compat  # noqa: E402,F401  (must come before TensorFlow)
import tensorflow as tf  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from tensorpack.utils import logger  # noqa: E402

from runtime.command_line import FlagParser  # noqa: E402
from networks import ARCHITECTURES, flops  # noqa: E402
from benchmarks.subjects import GHOST_MODELS, KERAS_MODELS, NUM_CLASSES  # noqa: E402


PANELS = {'graph': 'tensorpack / tf.keras graph', 'savedmodel': 'SavedModel', 'tflite': 'TFLite (LiteRT)',
          'tflite-int8': 'TFLite int8 (LiteRT)', 'onnx': 'ONNX Runtime'}
FAMILIES = {  # legend label, colour, marker, models in plotting order
    'GhostNet': ('GhostNet (tensorpack)', 'tab:red', 'o', ('ghostnet-0.5', 'ghostnet-1.0', 'ghostnet-1.3')),
    'MobileNetV3': ('MobileNetV3 (tf.keras)', 'tab:blue', 's', ('mobilenetv3-small', 'mobilenetv3-large')),
}
POINT_LABELS = {  # text, offset from the point (points) clear of the neighbouring models
    'ghostnet-0.5': ('0.5x', (-8, 6)), 'ghostnet-1.0': ('1.0x', (8, -12)), 'ghostnet-1.3': ('1.3x', (8, -12)),
    'mobilenetv3-small': ('Small', (8, -12)), 'mobilenetv3-large': ('Large', (-8, 7)),
    'ghostnet-pytorch-1.0': ('PyTorch 1.0x', (8, 6)), 'ghostnetv2-1.0': ('V2 1.0x', (8, -12)),
}
PAPER_MADDS_M = {'ghostnet-0.5': 42, 'ghostnet-1.0': 141, 'ghostnet-1.3': 226, 'ghostnet-pytorch-1.0': 142,
                 'ghostnetv2-1.0': 167,
                 'mobilenetv3-small': 56, 'mobilenetv3-large': 219}


def ghostnet_multiply_adds(arch, width, image_size):
    """Multiply-adds of the Ghost network `arch` at `width` on one image, counted on its tensorpack graph."""
    model = ARCHITECTURES[arch].model(NUM_CLASSES, width, image_shape=image_size)
    return flops.total_multiply_adds(flops.inference_graph(model))


def keras_multiply_adds(constructor, image_size):
    """Multiply-adds of a tf.keras.applications model on one image, counted on its traced graph."""
    network = getattr(tf.keras.applications, constructor)(
        input_shape=(image_size, image_size, 3), weights=None, classes=NUM_CLASSES)
    traced = tf.function(lambda x: network(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, image_size, image_size, 3], tf.float32))
    return flops.total_multiply_adds(traced.graph)


def multiply_adds(name, image_size):
    """Multiply-adds of a benchmarks/speed.py model name at `image_size`."""
    if name in GHOST_MODELS:
        return ghostnet_multiply_adds(*GHOST_MODELS[name], image_size)
    return keras_multiply_adds(KERAS_MODELS[name], image_size)


def read_bench(path):
    """A benchmarks/speed.py JSON report; exits with one `error:` line if it can not be read or has no results."""
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit('error: {}: not a readable benchmarks/speed.py JSON report ({})'.format(path, e))
    if not set(report.get('results', {})) & set(POINT_LABELS):
        sys.exit('error: {}: no results for {}'.format(path, ', '.join(POINT_LABELS)))
    return report


def plotted_paths(results):
    """The inference paths of PANELS that at least one model has a batch-1 latency for."""
    return [path for path in PANELS if any('latency_ms' in r.get(path, {}) for r in results.values())]


def draw_panel(ax, path, results, madds_m):
    """One path: per family, median latency against multiply-adds, bars down to the best latency."""
    for label, colour, marker, models in FAMILIES.values():
        measured = [m for m in models if 'latency_ms' in results.get(m, {}).get(path, {})]
        if not measured:
            continue
        x = [madds_m[m] for m in measured]
        y = [results[m][path]['latency_ms'] for m in measured]
        below = [v - results[m][path].get('best_latency_ms', v) for m, v in zip(measured, y)]
        ax.errorbar(x, y, yerr=[below, [0] * len(y)], color=colour, marker=marker, markersize=7,
                    ecolor=to_rgba(colour, 0.4), capsize=3, label=label)
        for name, xi, yi in zip(measured, x, y):
            text, offset = POINT_LABELS[name]
            ax.annotate(text, (xi, yi), textcoords='offset points', xytext=offset,
                        ha='left' if offset[0] > 0 else 'right', fontsize=9, color=colour,
                        bbox=dict(boxstyle='round,pad=0.15', facecolor='white', edgecolor='none', alpha=0.8))
    ax.set_title(PANELS[path])
    ax.set_xlabel('multiply-adds (M)')
    ax.set_xlim(0, max(madds_m.values()) * 1.15)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.1)
    ax.grid(alpha=0.3)


def caption(report, madds_m):
    """The machine and settings of the run, and how the multiply-adds were counted."""
    machine, settings = report.get('machine', {}), report.get('settings', {})
    load = report.get('load_average')
    counted = ', '.join('{} {:.1f}M (paper {}M)'.format(POINT_LABELS[m][0], madds_m[m], PAPER_MADDS_M[m])
                        for family in FAMILIES.values() for m in family[-1] if m in madds_m)
    return ('{cpu}, {cores} cores{load}, TensorFlow {tensorflow}; random weights; marker: median of {runs} '
            'runs, bar: down to the best.\nMultiply-adds counted by flops.py: {counted}.'.format(
                cpu=machine.get('cpu', '?'), cores=machine.get('cores', '?'),
                load=' (load average {:.1f} to {:.1f})'.format(*load) if load else '',
                tensorflow=machine.get('tensorflow', '?'),
                runs=settings.get('rounds', 0) * settings.get('iters', 0) or '?', counted=counted))


def plot(report, madds_m, out):
    """Write the figure: one panel per plotted path, shared legend and caption."""
    results, paths = report['results'], plotted_paths(report['results'])
    if not paths:
        sys.exit('error: no batch-1 latency of {} in the report'.format(' / '.join(PANELS)))
    figure = Figure(figsize=(4.2 * len(paths), 4.6), layout='constrained')
    axes = figure.subplots(1, len(paths), squeeze=False)[0]
    for ax, path in zip(axes, paths):
        draw_panel(ax, path, results, madds_m)
    axes[0].set_ylabel('latency, batch 1 (ms)')
    axes[0].legend(loc='upper left', fontsize=9)
    figure.suptitle('Batch-1 latency against multiply-adds ({0}x{0} input)'.format(
        report.get('settings', {}).get('image_size', 224)))
    figure.supxlabel(caption(report, madds_m), fontsize=8)
    figure.savefig(out, dpi=120)
    logger.info('Wrote {}'.format(out))


def parse_args(argv=None):
    parser = FlagParser(description=__doc__.split('\n')[0])
    parser.add_argument('--bench', default=os.path.join(ROOT, 'benchmarks', 'results', 'bench_results.json'),
                        help='a benchmarks/speed.py JSON report')
    parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      'latency_vs_madds.png'))
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    report = read_bench(args.bench)
    image_size = report.get('settings', {}).get('image_size', 224)
    known = [name for name in report['results'] if name in POINT_LABELS]
    madds_m = {name: multiply_adds(name, image_size) / 1e6 for name in known}
    for name, value in madds_m.items():
        logger.info('{}: {:.1f}M multiply-adds at {}x{}'.format(name, value, image_size, image_size))
    plot(report, madds_m, args.out)


if __name__ == '__main__':
    main()
