"""The benchmark tools' own parts, on a small LiteRT file: benchmarks/litert_ops.py cuts a file into one-operator
files that each compute, on the values the whole file gives them, what the operator computes in the whole file."""
import numpy as np
import tensorflow as tf

from benchmarks import litert_ops

BATCH = 3


def small_file(path):
    """A LiteRT file on a batch of any size: conv with ReLU, a square (one tensor taken twice), a product with a
    second input, an addition, and a reshape to a shape computed at run time."""
    kernel = tf.constant(np.random.RandomState(0).normal(size=(3, 3, 4, 6)).astype(np.float32) / 100)

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 4], tf.float32),
                                  tf.TensorSpec([None, 8, 8, 6], tf.float32)])
    def network(images, scales):
        features = tf.nn.relu(tf.nn.conv2d(images, kernel, 1, 'SAME'))
        return tf.reshape(features * features * scales + 1., [tf.shape(images)[0], -1])

    converter = tf.lite.TFLiteConverter.from_concrete_functions([network.get_concrete_function()], network)
    with open(path, 'wb') as f:
        f.write(converter.convert())
    return path


def test_each_operator_alone_computes_what_it_computes_in_the_file(tmp_path):
    path = small_file(str(tmp_path / 'small.tflite'))
    model = litert_ops.cuttable_model(path)
    kinds = [kind for kind, _ in litert_ops.operator_labels(model)]
    assert {'CONV_2D', 'MUL', 'ADD', 'SHAPE', 'RESHAPE'} <= set(kinds), kinds
    operators = model.subgraphs[0].operators
    squares = [op for op, kind in zip(operators, kinds) if kind == 'MUL' and op.inputs[0] == op.inputs[1]]
    assert squares and len(litert_ops.variable_inputs(model, squares[0])) == 1
    contents = [litert_ops.one_operator_file(model, operator) for operator in operators]
    alone = litert_ops.operator_interpreters(model, contents, path, [BATCH], thread_counts=[1, 2])
    whole = litert_ops.whole_run(path, BATCH)
    for (index, threads, batch), interpreter in alone.items():
        assert batch == BATCH and threads in (1, 2)
        interpreter.invoke()
        expected = whole.get_tensor(operators[index].outputs[0])
        computed = interpreter.get_tensor(interpreter.get_output_details()[0]['index'])
        assert computed.shape == expected.shape, kinds[index]
        np.testing.assert_allclose(computed, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max() + 1e-30,
                                   err_msg=kinds[index])
    assert len(alone) == 2 * len(operators)
    assert whole.get_tensor(model.subgraphs[0].outputs[0]).shape == (BATCH, 8 * 8 * 6)


def test_the_report_compares_thread_counts():
    """With two thread counts, the report gives each kind's ms on both and the speedup between them."""
    def result(conv_ms, whole_ms):
        return {'whole_ms': whole_ms, 'operators_ms': conv_ms + 0.5, 'operators_ms_copies_aside': conv_ms,
                'by_kind': {'CONV_2D': {'count': 3, 'ms': conv_ms}, 'PAD': {'count': 1, 'ms': 0.5}},
                'longest': [{'ms': conv_ms, 'kind': 'CONV_2D', 'name': 'stem'}]}
    report = {'machine': {'cpu': 'test', 'cores': 2, 'tensorflow': '0'},
              'settings': {'image_size': 8, 'threads': [1, 2], 'rounds': 1, 'iters': 1, 'batch_iters': 1, 'batch': 4},
              'results': {'net': {1: {1: result(3.0, 4.0), 4: result(9.0, 12.0)},
                                  2: {1: result(2.0, 2.5), 4: result(5.0, 6.0)}}}}
    text = litert_ops.markdown(report)
    assert '## net at batch 4 on 2 threads' in text and '## net at batch 1: 2 threads against 1 thread' in text
    assert '| whole file |  | 4.000 | 2.500 | 1.60x |' in text
    assert '| CONV_2D | 3 | 9.000 | 5.000 | 1.80x |' in text
