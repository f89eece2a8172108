"""Where a LiteRT file spends its time, operator by operator.

    python -m benchmarks.litert_ops --models ghostnetv2-1.0,mobilenetv3-large --threads 1

Each model's float file (exported as benchmarks/speed.py exports it, random weights) is cut into one-operator
files, each with its constant inputs and the shapes a whole-network run gives it, and every one is timed alone
at batch 1 and at --batch, in interleaved rounds, beside the whole file. Alone, an operator finds its inputs and
weights in cache, and on more than one thread each run also wakes the thread pool: the sum is a profile, not
the network's time, and one thread gives the closest. In the network, XNNPACK fuses a PAD into the conv that
takes it and a RESHAPE costs nothing measurable; alone, each is a copy. Writes OUT.md and OUT.json (default
benchmarks/results/litert_ops).
"""
import collections
import copy
import os
import statistics
import tempfile

import compat  # noqa: F401  (must come before TensorFlow)
import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from tensorpack.utils import logger

from benchmarks.harness import (add_timing_arguments, comma_list, machine, parse_timing_args, random_images,
                                result_path, thread_phrase, time_interleaved, tflite_call, write_report)
from benchmarks.subjects import MODELS, subject
from deploy import export
from deploy.litert_schedule import operator_names, read_model
from runtime.command_line import FlagParser

WHOLE = 'whole file'
TOP_OPERATORS = 15
COPIES_ALONE = ('PAD', 'RESHAPE')   # fused or free in the network, a copy alone


def float_file(name, image_size, workdir):
    """The float LiteRT file of benchmark model `name`, exported as benchmarks/speed.py exports it."""
    subject_ = subject(name, image_size)
    session = subject_.graph(training=False)[0]
    saved_model = subject_.saved_model(session, os.path.join(workdir, name))
    return export.export_tflite(saved_model, os.path.join(workdir, name + '.tflite'))


def tensor_shapes(path, batch):
    """{tensor index: shape} of the file's main subgraph run at `batch`, without delegates (whose inner
    tensors keep the shapes the file states)."""
    interpreter = Interpreter(path, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]['index'], [batch] + list(
        interpreter.get_input_details()[0]['shape'][1:]))
    interpreter.allocate_tensors()
    return {detail['index']: list(detail['shape']) for detail in interpreter.get_tensor_details()}


def is_constant(model, tensor):
    """Whether a tensor of the main subgraph holds data in the file (a weight, a shape)."""
    data = model.buffers[model.subgraphs[0].tensors[tensor].buffer].data
    return data is not None and len(data) > 0


def one_operator_file(model, operator):
    """A LiteRT file (bytes) holding `operator` of `model`'s main subgraph alone: its constant inputs kept, its
    other inputs the file's inputs, its outputs the file's outputs."""
    tensors = model.subgraphs[0].tensors
    used = list(dict.fromkeys(index for index in list(operator.inputs) + list(operator.outputs) if index >= 0))
    alone = schema.ModelT()
    alone.version, alone.operatorCodes, alone.buffers = model.version, model.operatorCodes, [schema.BufferT()]
    subgraph, renumbered = schema.SubGraphT(), {index: position for position, index in enumerate(used)}
    subgraph.tensors = []
    for index in used:
        tensor = copy.copy(tensors[index])
        tensor.buffer = 0
        if is_constant(model, index):
            alone.buffers.append(model.buffers[tensors[index].buffer])
            tensor.buffer = len(alone.buffers) - 1
        subgraph.tensors.append(tensor)
    single = copy.copy(operator)
    single.inputs = [renumbered.get(index, -1) for index in operator.inputs]
    single.outputs = [renumbered[index] for index in operator.outputs]
    subgraph.operators = [single]
    subgraph.inputs = [renumbered[index] for index in used
                       if index in operator.inputs and not is_constant(model, index)]
    subgraph.outputs = list(single.outputs)
    alone.subgraphs = [subgraph]
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(alone.Pack(builder), file_identifier=b'TFL3')
    return bytes(builder.Output())


def operator_call(content, input_shapes, threads):
    """One invocation of a one-operator file on inputs of `input_shapes` (random values)."""
    interpreter = Interpreter(model_content=content, num_threads=threads)
    details = interpreter.get_input_details()
    for detail, shape in zip(details, input_shapes):
        interpreter.resize_tensor_input(detail['index'], shape)
    interpreter.allocate_tensors()
    rng = np.random.RandomState(0)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail['index'], rng.uniform(0, 1, detail['shape']).astype(detail['dtype']))
    return interpreter.invoke


def operators(path):
    """[(kind, name)] of the file's main subgraph, in the file's order."""
    model = read_model(path)
    kinds = operator_names(model)
    tensors = model.subgraphs[0].tensors
    return [(kinds[op.opcodeIndex], tensors[op.outputs[0]].name.decode()) for op in model.subgraphs[0].operators]


def operator_calls(path, batch, threads):
    """{operator index: call} of every operator of the file alone, on the shapes the file has at `batch`."""
    model, shapes = read_model(path), tensor_shapes(path, batch)
    calls = {}
    for index, operator in enumerate(model.subgraphs[0].operators):
        inputs = [shapes[tensor] for tensor in operator.inputs if tensor >= 0 and not is_constant(model, tensor)]
        calls[index] = operator_call(one_operator_file(model, operator), inputs, threads)
    return calls


def profile(name, samples, kinds, batch):
    """One model's report at `batch`: the whole file's ms, the operators' sum, per kind, and the longest."""
    medians = {key[1]: statistics.median(times) * 1e3 for key, times in samples.items()
               if key[0] == name and key[2] == batch}
    per_operator = [(medians[index], kind, op_name) for index, (kind, op_name) in enumerate(kinds)]
    by_kind = collections.defaultdict(lambda: [0, 0.])
    for ms, kind, _ in per_operator:
        by_kind[kind][0] += 1
        by_kind[kind][1] += ms
    return {'whole_ms': round(medians[WHOLE], 3), 'operators_ms': round(sum(ms for ms, _, _ in per_operator), 3),
            'operators_ms_copies_aside': round(sum(ms for ms, kind, _ in per_operator if kind not in COPIES_ALONE), 3),
            'by_kind': {kind: {'count': count, 'ms': round(ms, 3)}
                        for kind, (count, ms) in sorted(by_kind.items(), key=lambda item: -item[1][1])},
            'longest': [{'ms': round(ms, 3), 'kind': kind, 'name': op_name}
                        for ms, kind, op_name in sorted(per_operator, reverse=True)[:TOP_OPERATORS]]}


def markdown(report):
    """The report as Markdown: per model and batch, the operators by kind and the longest ones."""
    settings = report['settings']
    lines = ['# LiteRT operator by operator', '',
             'Machine: {cpu}, {cores} cores; TensorFlow {tensorflow}.'.format(**report['machine']),
             'Float files of benchmarks/speed.py ({0}x{0}, random weights) cut into one-operator files, each timed '
             'alone on {1}, medians of {2} interleaved rounds beside the whole file. Alone, an operator finds its '
             'data in cache and on more than one thread wakes the thread pool at each run: the sum is a profile, '
             'not the network\'s time. In the network, XNNPACK fuses a PAD into the conv that takes it and a RESHAPE '
             'costs nothing measurable; alone, each is a copy.'.format(
                 settings['image_size'], thread_phrase(settings['threads']), settings['rounds'])]
    for name, batches in report['results'].items():
        for batch, result in batches.items():
            lines += ['', '## {} at batch {}'.format(name, batch), '',
                      'Whole file {whole_ms:.3f} ms; its operators alone {operators_ms:.3f} ms, '
                      '{operators_ms_copies_aside:.3f} ms without PAD and RESHAPE.'.format(**result), '',
                      '| operator | count | ms | share of the operators |', '|---|---|---|---|']
            lines += ['| {} | {} | {:.3f} | {:.1%} |'.format(kind, entry['count'], entry['ms'],
                                                             entry['ms'] / result['operators_ms'])
                      for kind, entry in result['by_kind'].items()]
            lines += ['', '| longest | ms | output |', '|---|---|---|']
            lines += ['| {kind} | {ms:.3f} | `{name}` |'.format(**entry) for entry in result['longest']]
    return '\n'.join(lines) + '\n'


def parse_args(argv=None):
    parser = FlagParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', type=comma_list(MODELS), default=['ghostnetv2-1.0', 'mobilenetv3-large'],
                        help='comma-separated, from ' + ','.join(MODELS))
    add_timing_arguments(parser, rounds=5, iters=5, batch_iters=1, out=result_path('litert_ops'))
    return parse_timing_args(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    report = {'machine': machine(), 'settings': {key: getattr(args, key) for key in (
        'models', 'rounds', 'iters', 'batch_iters', 'batch', 'image_size', 'threads')}, 'results': {}}
    calls, kinds = {}, {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            path = float_file(name, args.image_size, workdir)
            kinds[name] = operators(path)
            for batch in (1, args.batch):
                images = random_images(batch, args.image_size)
                calls[(name, WHOLE, batch)] = tflite_call(path, images, args.threads)
                calls.update({(name, index, batch): call
                              for index, call in operator_calls(path, batch, args.threads).items()})
        samples = time_interleaved(calls, args)
    for name in args.models:
        report['results'][name] = {batch: profile(name, samples, kinds[name], batch) for batch in (1, args.batch)}
    write_report(report, args.out, markdown(report))
    logger.info('Wrote {0}.md and {0}.json:\n{1}'.format(args.out, markdown(report)))


if __name__ == '__main__':
    main()
