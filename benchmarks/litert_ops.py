"""Where a LiteRT file spends its time, operator by operator.

    python -m benchmarks.litert_ops --models ghostnetv2-1.0,mobilenetv3-large --threads 1,2

Each model's float file (exported as benchmarks/speed.py exports it, random weights) is cut into one-operator
files, each with its constant inputs, and every one is timed alone on the values a whole-file run at batch 1 and
at --batch gives it, in interleaved rounds beside the whole file (`ALONE` says what that measures), on each
thread count of --threads in the same rounds. Writes OUT.md and OUT.json (default benchmarks/results/litert_ops).
"""
import collections
import copy
import os
import statistics
import tempfile

import compat  # noqa: F401  (must come before TensorFlow)
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from tensorpack.utils import logger

from benchmarks.harness import (add_timing_arguments, comma_list, machine, parse_timing_args, random_images,
                                result_path, thread_phrase, time_interleaved, tflite_call, write_report)
from benchmarks.subjects import MODELS, subject
from deploy import export
from deploy.litert_schedule import operator_kinds, packed, read_model
from runtime.command_line import FlagParser

WHOLE = 'whole file'
TOP_OPERATORS = 15
COPIES_ALONE = ('PAD', 'RESHAPE')   # fused into the next conv or free in the network, a copy alone
ALONE = ('Alone, an operator finds its data in cache and, on more than one thread, wakes the thread pool at each '
         'run: the sum is a profile, not the network\'s time, and one thread gives the closest. In the network, '
         'XNNPACK fuses a PAD into the conv that takes it and a RESHAPE costs nothing measurable; alone, each is '
         'a copy.')


def float_file(name, image_size, workdir):
    """The float LiteRT file of benchmark model `name`, exported as benchmarks/speed.py exports it."""
    subject_ = subject(name, image_size)
    session = subject_.graph(training=False)[0]
    saved_model = subject_.saved_model(session, os.path.join(workdir, name))
    return export.export_tflite(saved_model, os.path.join(workdir, name + '.tflite'))


def cuttable_model(path):
    """The file at `path` as a ModelT, if one_operator_file can cut it: one subgraph, weights inside the file."""
    model = read_model(path)
    if len(model.subgraphs) != 1:
        raise ValueError('{} has {} subgraphs; only a single-subgraph file is cut'.format(
            path, len(model.subgraphs)))
    if any(buffer.offset for buffer in model.buffers):
        raise ValueError('{} keeps its weights outside the flatbuffer; they are not cut'.format(path))
    return model


def whole_run(path, batch):
    """An interpreter (no delegate) that has run the file at `batch` on seeded values in [0, 255], every tensor
    kept."""
    interpreter = Interpreter(path, experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    inputs = interpreter.get_input_details()
    for detail in inputs:
        interpreter.resize_tensor_input(detail['index'], [batch] + list(detail['shape'][1:]))
    interpreter.allocate_tensors()
    rng = np.random.RandomState(0)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail['index'], rng.uniform(0, 255, detail['shape']).astype(detail['dtype']))
    interpreter.invoke()
    return interpreter


def is_constant(model, tensor):
    """Whether a tensor of the main subgraph holds data in the file (a weight, a shape)."""
    data = model.buffers[model.subgraphs[0].tensors[tensor].buffer].data
    return data is not None and len(data) > 0


def variable_inputs(model, operator):
    """The operator's inputs that are not constants, each once, in the order it takes them: the inputs of its
    one-operator file."""
    return list(dict.fromkeys(index for index in operator.inputs if index >= 0 and not is_constant(model, index)))


def one_operator_file(model, operator):
    """A LiteRT file (bytes) holding `operator` of `model`'s main subgraph alone: its constant inputs kept, its
    `variable_inputs` the file's inputs, its outputs the file's outputs."""
    tensors = model.subgraphs[0].tensors
    used = list(dict.fromkeys(index for index in [*operator.inputs, *operator.outputs, *(operator.intermediates or [])]
                              if index >= 0))
    renumbered = {index: position for position, index in enumerate(used)}
    alone, subgraph = schema.ModelT(), schema.SubGraphT()
    alone.version, alone.operatorCodes, alone.buffers = model.version, model.operatorCodes, [schema.BufferT()]
    subgraph.tensors = []
    for index in used:
        tensor = copy.copy(tensors[index])
        tensor.buffer = 0
        if is_constant(model, index):
            alone.buffers.append(model.buffers[tensors[index].buffer])
            tensor.buffer = len(alone.buffers) - 1
        subgraph.tensors.append(tensor)
    single = copy.copy(operator)
    single.inputs, single.outputs, single.intermediates = (
        [renumbered.get(index, -1) for index in indices] if indices is not None else None
        for indices in (operator.inputs, operator.outputs, operator.intermediates))
    subgraph.operators = [single]
    subgraph.inputs = [renumbered[index] for index in variable_inputs(model, operator)]
    subgraph.outputs = [index for index in single.outputs if index >= 0]
    alone.subgraphs = [subgraph]
    return packed(alone)


def operator_interpreter(content, values, threads):
    """An interpreter of a one-operator file, its inputs set to `values` (in its inputs' order)."""
    interpreter = Interpreter(model_content=content, num_threads=threads)
    details = interpreter.get_input_details()
    if len(details) != len(values):
        raise ValueError('a one-operator file takes {} inputs, not {}'.format(len(details), len(values)))
    for detail, value in zip(details, values):
        interpreter.resize_tensor_input(detail['index'], value.shape)
    interpreter.allocate_tensors()
    for detail, value in zip(details, values):
        interpreter.set_tensor(detail['index'], value)
    return interpreter


def operator_interpreters(model, contents, path, batches, thread_counts):
    """{(operator index, threads, batch): interpreter} of each one-operator file in `contents` on each of
    `thread_counts`, on the values a whole-file run at that batch gives the operator."""
    interpreters = {}
    for batch in batches:
        whole = whole_run(path, batch)
        for index, operator in enumerate(model.subgraphs[0].operators):
            values = [whole.get_tensor(tensor) for tensor in variable_inputs(model, operator)]
            for threads in thread_counts:
                interpreters[(index, threads, batch)] = operator_interpreter(contents[index], values, threads)
    return interpreters


def operator_labels(model):
    """[(kind, output name)] of the main subgraph's operators, in the file's order."""
    operators, tensors = model.subgraphs[0].operators, model.subgraphs[0].tensors
    kinds = operator_kinds(model, operators)
    return [(kind, tensors[op.outputs[0]].name.decode()) for kind, op in zip(kinds, operators)]


def profile(samples, labels, name, threads, batch):
    """One model's report on `threads` at `batch`: the whole file's ms, the operators' sum, per kind, and the
    longest."""
    medians = {key[2]: statistics.median(times) * 1e3 for key, times in samples.items()
               if key[:2] == (name, threads) and key[3] == batch}
    per_operator = [(medians[index], kind, output) for index, (kind, output) in enumerate(labels)]
    by_kind = collections.defaultdict(lambda: [0, 0.])
    for ms, kind, _ in per_operator:
        by_kind[kind][0] += 1
        by_kind[kind][1] += ms
    return {'whole_ms': round(medians[WHOLE], 3), 'operators_ms': round(sum(ms for ms, _, _ in per_operator), 3),
            'operators_ms_copies_aside': round(sum(ms for ms, kind, _ in per_operator if kind not in COPIES_ALONE), 3),
            'by_kind': {kind: {'count': count, 'ms': round(ms, 3)}
                        for kind, (count, ms) in sorted(by_kind.items(), key=lambda item: -item[1][1])},
            'longest': [{'ms': round(ms, 3), 'kind': kind, 'name': output}
                        for ms, kind, output in sorted(per_operator, reverse=True)[:TOP_OPERATORS]]}


def markdown(report):
    """The report as Markdown: per model, thread count and batch, the operators by kind and the longest ones;
    with several thread counts, what each kind gains from the first count to the last."""
    settings = report['settings']
    lines = ['# LiteRT operator by operator', '',
             'Machine: {cpu}, {cores} cores; TensorFlow {tensorflow}.'.format(**report['machine']),
             'Float files of benchmarks/speed.py ({0}x{0}, random weights) cut into one-operator files, each timed '
             'alone on {1} on the values a whole-file run gives it: medians of {2} batch-1 and {3} batch-{4} runs in '
             '{5} interleaved rounds, beside the whole file. {6}'.format(
                 settings['image_size'], ' and on '.join(thread_phrase(count) for count in settings['threads']),
                 settings['rounds'] * settings['iters'], settings['rounds'] * settings['batch_iters'],
                 settings['batch'], settings['rounds'], ALONE)]
    for name, by_threads in report['results'].items():
        for threads, batches in by_threads.items():
            for batch, result in batches.items():
                lines += profile_lines(result, '{} at batch {} on {}'.format(name, batch, thread_phrase(threads)))
        if len(by_threads) > 1:
            for batch in (1, settings['batch']):
                lines += scaling_lines(name, batch, by_threads)
    return '\n'.join(lines) + '\n'


def profile_lines(result, title):
    """One profile (as `profile` gives it) as a Markdown section: the operators by kind, then the longest."""
    lines = ['', '## ' + title, '',
             'Whole file {:.3f} ms; its operators alone {:.3f} ms, {:.3f} ms without {}.'.format(
                 result['whole_ms'], result['operators_ms'], result['operators_ms_copies_aside'],
                 ' and '.join(COPIES_ALONE)), '',
             '| operator | count | ms | share of the operators |', '|---|---|---|---|']
    lines += ['| {} | {} | {:.3f} | {:.1%} |'.format(kind, entry['count'], entry['ms'],
                                                     entry['ms'] / result['operators_ms'])
              for kind, entry in result['by_kind'].items()]
    lines += ['', '| longest | ms | output |', '|---|---|---|']
    return lines + ['| {kind} | {ms:.3f} | `{name}` |'.format(**entry) for entry in result['longest']]


def scaling_lines(name, batch, by_threads):
    """A Markdown section: the whole file's and each kind's ms on the first thread count and the last, and the
    speedup between them."""
    counts = list(by_threads)
    few, many = counts[0], counts[-1]
    fewer, more = by_threads[few][batch], by_threads[many][batch]
    rows = [('whole file', '', fewer['whole_ms'], more['whole_ms']),
            ('operators alone, without ' + ' and '.join(COPIES_ALONE), '', fewer['operators_ms_copies_aside'],
             more['operators_ms_copies_aside'])]
    rows += [(kind, entry['count'], entry['ms'], more['by_kind'][kind]['ms'])
             for kind, entry in fewer['by_kind'].items()]
    lines = ['', '## {} at batch {}: {} against {}'.format(name, batch, thread_phrase(many), thread_phrase(few)),
             '', '| | count | ms on {} | ms on {} | speedup |'.format(thread_phrase(few), thread_phrase(many)),
             '|---|---|---|---|---|']
    return lines + ['| {} | {} | {:.3f} | {:.3f} | {} |'.format(label, count, slow, fast,
                                                                '{:.2f}x'.format(slow / fast) if fast else '-')
                    for label, count, slow, fast in rows]


def parse_args(argv=None):
    parser = FlagParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', type=comma_list(MODELS), default=['ghostnetv2-1.0', 'mobilenetv3-large'],
                        help='comma-separated, from ' + ','.join(MODELS))
    add_timing_arguments(parser, rounds=5, iters=5, batch_iters=1, out=result_path('litert_ops'),
                         several_threads=True)
    return parse_timing_args(parser, argv)


def model_calls(name, args, workdir):
    """([(kind, output name)], {(name, threads, operator index or WHOLE, batch): call}) of one model's float file
    on each of --threads."""
    path = float_file(name, args.image_size, workdir)
    model = cuttable_model(path)
    contents = [one_operator_file(model, operator) for operator in model.subgraphs[0].operators]
    batches = (1, args.batch)
    calls = {(name, threads, WHOLE, batch): tflite_call(path, random_images(batch, args.image_size), threads)
             for threads in args.threads for batch in batches}
    calls.update({(name, threads, index, batch): interpreter.invoke for (index, threads, batch), interpreter in
                  operator_interpreters(model, contents, path, batches, args.threads).items()})
    return operator_labels(model), calls


def main(argv=None):
    args = parse_args(argv)
    report = {'machine': machine(), 'settings': {key: getattr(args, key) for key in (
        'models', 'rounds', 'iters', 'batch_iters', 'batch', 'image_size', 'threads')}, 'results': {}}
    calls, labels = {}, {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            labels[name], calls_of_model = model_calls(name, args, workdir)
            calls.update(calls_of_model)
        samples = time_interleaved(calls, args)
    for name in args.models:
        report['results'][name] = {threads: {batch: profile(samples, labels[name], name, threads, batch)
                                             for batch in (1, args.batch)} for threads in args.threads}
    text = markdown(report)
    write_report(report, args.out, text)
    logger.info('Wrote {0}.md and {0}.json:\n{1}'.format(args.out, text))


if __name__ == '__main__':
    main()
