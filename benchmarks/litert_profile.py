"""Where LiteRT spends GhostNet's time: the serving network cut after each block, each cut exported as
export.py exports the whole network, and all timed in turn on the same threads. A block's time is its
cut's time less the previous cut's; beside it, the block's share of the multiply-adds.

    python -m benchmarks.litert_profile [--width_ratio 1.0]

Writes OUT.md and OUT.json (default benchmarks/results/litert_profile); random weights, as in
benchmarks/speed.py.
"""
import collections
import os
import re
import statistics
import tempfile

import compat  # noqa: F401  (must come before TensorFlow)
import tensorflow as tf
from tensorpack.utils import logger

from deploy import export
from deploy.litert_schedule import operator_kinds, read_model
from networks import flops
from runtime.command_line import FlagParser
from runtime.session import without_graph_optimization
from benchmarks.harness import (add_timing_arguments, machine, parse_timing_args, random_images, result_path,
                                thread_phrase, time_interleaved, tflite_call, write_report)
from benchmarks.subjects import NUM_CLASSES
from ghostnet import BOTTLENECKS, GhostNet

tfv1 = tf.compat.v1

CUT_BLOCKS = tuple('Conv2d_{}'.format(index) for index in range(len(BOTTLENECKS) + 2))   # Conv2d_0 .. 17
HEAD = 'head'   # global pool, Conv2d_18, the classifier, softmax and top-5: the rest of the serving graph


def frozen_cuts(model):
    """The frozen serving graph (random weights) with a node `cut_<block>` on each block's output."""
    graph = export.serving_graph(model)
    with graph.as_default(), tfv1.Session(graph=graph, config=without_graph_optimization()) as sess:
        for block in CUT_BLOCKS:
            tf.identity(model.end_points[block], name='cut_' + block)
        sess.run(tfv1.global_variables_initializer())
        outputs = ['cut_' + block for block in CUT_BLOCKS] + list(export.SERVING_OUTPUTS)
        return tfv1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), outputs)


def cut_outputs(block):
    """The outputs of the network cut after `block`; after the head, the serving outputs."""
    return export.SERVING_OUTPUTS if block == HEAD else ('cut_' + block,)


def op_counts(path):
    """{TFLite builtin op name: count} of a flatbuffer's main subgraph."""
    model = read_model(path)
    return dict(collections.Counter(operator_kinds(model, model.subgraphs[0].operators)).most_common())


def block_of(layer_name):
    """The block of a layer of flops.py's table: Conv2d_<n> for n <= 17, else the head."""
    match = re.match(r'Conv2d_(\d+)', layer_name.split('/')[1])
    return match.group(0) if match and match.group(0) in CUT_BLOCKS else HEAD


def block_multiply_adds(model):
    """{block: multiply-adds of one image}."""
    totals = collections.Counter()
    for row in flops.layer_table(flops.inference_graph(model)):
        totals[block_of(row.name)] += row.multiply_adds
    return totals


def profile(args):
    """{'blocks': [per block: name, output shape, ms per image at the batch, batch-1 ms, multiply-adds],
    'ops': the whole file's op counts}."""
    model = GhostNet(NUM_CLASSES, args.width, image_shape=args.image_size)
    graph_def = frozen_cuts(model)
    shapes = {block: model.end_points[block].shape.as_list()[1:] for block in CUT_BLOCKS}
    shapes[HEAD] = [NUM_CLASSES]
    calls = {}
    with tempfile.TemporaryDirectory() as workdir:
        for block in CUT_BLOCKS + (HEAD,):
            saved_model = export.save_saved_model(graph_def, args.image_size, os.path.join(workdir, block),
                                                  cut_outputs(block))
            path = export.export_tflite(saved_model, os.path.join(workdir, block + '.tflite'))
            for batch in (1, args.batch):
                calls[(block, batch)] = tflite_call(path, random_images(batch, args.image_size), args.threads)
        ops = op_counts(path)   # the last cut is the whole network
        samples = time_interleaved(calls, args)
    multiply_adds = block_multiply_adds(model)
    blocks, previous = [], (0., 0.)
    for block in CUT_BLOCKS + (HEAD,):
        cumulative = (statistics.median(samples[(block, args.batch)]) / args.batch * 1e3,
                      statistics.median(samples[(block, 1)]) * 1e3)
        blocks.append(dict(block=block, shape=shapes[block], ms_per_image=round(cumulative[0] - previous[0], 3),
                           latency_ms=round(cumulative[1] - previous[1], 3), multiply_adds=multiply_adds[block]))
        previous = cumulative
    return {'blocks': blocks, 'ops': ops, 'total_ms_per_image': round(previous[0], 3),
            'total_latency_ms': round(previous[1], 3)}


def share(part, whole):
    return '{:.1f}%'.format(100 * part / whole) if whole else '-'


def stages(blocks):
    """The blocks summed by the spatial size of their output (the head on its own)."""
    grouped = collections.OrderedDict()
    for b in blocks:
        key = '{0}x{0}'.format(b['shape'][0]) if len(b['shape']) == 3 else b['block']
        stage = grouped.setdefault(key, dict(block=key, blocks=[], ms_per_image=0., latency_ms=0., multiply_adds=0))
        stage['blocks'].append(b['block'])
        for metric in ('ms_per_image', 'latency_ms', 'multiply_adds'):
            stage[metric] += b[metric]
    for stage in grouped.values():
        names = stage.pop('blocks')
        stage['shape'] = names[0] if len(names) == 1 else '{} .. {}'.format(names[0], names[-1])
    return list(grouped.values())


def table(rows, result, first_column, batch):
    """Markdown rows of time (at the batch and at batch 1) against multiply-adds."""
    total_madds = sum(row['multiply_adds'] for row in rows)
    lines = ['| {} | ms/image at batch {} | share | batch-1 ms | share | multiply-adds (M) | share | GMAC/s at '
             'batch {} |'.format(first_column, batch, batch), '|---|---|---|---|---|---|---|---|']
    for row in rows:
        rate = '{:.0f}'.format(row['multiply_adds'] / row['ms_per_image'] / 1e6) if row['ms_per_image'] > 0 else '-'
        lines.append('| {} | {:.3f} | {} | {:.3f} | {} | {:.1f} | {} | {} |'.format(
            row['label'], row['ms_per_image'], share(row['ms_per_image'], result['total_ms_per_image']),
            row['latency_ms'], share(row['latency_ms'], result['total_latency_ms']), row['multiply_adds'] / 1e6,
            share(row['multiply_adds'], total_madds), rate))
    return lines


def markdown(report):
    """The report as Markdown: per stage and per block, time at the batch and at batch 1 against multiply-adds."""
    settings, result = report['settings'], report['result']
    batch = settings['batch']
    blocks = [dict(b, label='{} ({})'.format(b['block'], 'x'.join(map(str, b['shape'])))) for b in result['blocks']]
    stage_rows = [dict(s, label=s['block'] if s['shape'] == s['block'] else '{} ({})'.format(s['block'], s['shape']))
                  for s in stages(result['blocks'])]
    lines = ['# Where LiteRT spends GhostNet {}x\'s time'.format(settings['width']), '',
             'Machine: {cpu}, {cores} cores; TensorFlow {tensorflow}.'.format(**report['machine']),
             'The float TFLite file of `--export --tflite` ({0}x{0}, random weights) cut after each block; '
             'every cut timed in LiteRT on {1}, in {2} interleaved rounds; a block is its cut less '
             'the one before (the first includes the uint8 input cast, the head the pooling, Conv2d_18, the '
             'classifier, softmax and top-5). Total: {3:.3f} ms per image at batch {4}, {5:.3f} ms at batch 1. '
             'A single block\'s difference is within the timing noise (about 0.05 ms per image, hence the '
             'negative ones); the stages sum several.'.format(
                 settings['image_size'], thread_phrase(settings['threads']), settings['rounds'],
                 result['total_ms_per_image'], batch, result['total_latency_ms']),
             '', '## By output size', '']
    lines += table(stage_rows, result, 'stage (blocks)', batch)
    lines += ['', '## By block', ''] + table(blocks, result, 'block (output)', batch)
    lines += ['', 'Operators in the whole file: ' + ', '.join(
        '{} {}'.format(count, name) for name, count in result['ops'].items()) + '.']
    return '\n'.join(lines) + '\n'


def parse_args(argv=None):
    parser = FlagParser(description=__doc__.split('\n')[0])
    parser.add_argument('--width', type=float, default=1.0, help='GhostNet width multiplier')
    add_timing_arguments(parser, rounds=7, iters=10, batch_iters=2, out=result_path('litert_profile'))
    return parse_timing_args(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    report = {'machine': machine(), 'settings': {key: getattr(args, key) for key in (
        'width', 'batch', 'image_size', 'rounds', 'iters', 'batch_iters', 'threads')}, 'result': profile(args)}
    write_report(report, args.out, markdown(report))
    logger.info('Wrote {0}.md and {0}.json:\n{1}'.format(args.out, markdown(report)))


if __name__ == '__main__':
    main()
