"""The benchmark tools' own parts, on a small LiteRT file: benchmarks/litert_ops.py cuts a file into one-operator
files that each compute what the operator computes in the whole file."""
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from benchmarks import litert_ops
from deploy.litert_schedule import read_model


def small_file(path):
    """A LiteRT file of conv, ReLU, a product of two dynamic tensors and an addition, on a batch of any size."""
    kernel = tf.constant(np.random.RandomState(0).normal(size=(3, 3, 4, 6)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 4], tf.float32), tf.TensorSpec([None, 8, 8, 6],
                                                                                               tf.float32)])
    def network(images, scales):
        return tf.nn.relu(tf.nn.conv2d(images, kernel, 1, 'SAME')) * scales + 1.

    converter = tf.lite.TFLiteConverter.from_concrete_functions([network.get_concrete_function()], network)
    with open(path, 'wb') as f:
        f.write(converter.convert())
    return path


def test_each_operator_alone_computes_what_it_computes_in_the_file(tmp_path):
    path = small_file(str(tmp_path / 'small.tflite'))
    whole = Interpreter(path, experimental_preserve_all_tensors=True,
                        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    rng = np.random.RandomState(1)
    for detail in whole.get_input_details():
        whole.resize_tensor_input(detail['index'], [3] + list(detail['shape'][1:]))
    whole.allocate_tensors()
    for detail in whole.get_input_details():
        whole.set_tensor(detail['index'], rng.normal(size=detail['shape']).astype(np.float32))
    whole.invoke()
    model = read_model(path)
    assert litert_ops.tensor_shapes(path, 3)[model.subgraphs[0].outputs[0]] == [3, 8, 8, 6]
    assert [kind for kind, _ in litert_ops.operators(path)] == ['CONV_2D', 'MUL', 'ADD']
    for operator in model.subgraphs[0].operators:
        alone = Interpreter(model_content=litert_ops.one_operator_file(model, operator))
        inputs = [index for index in operator.inputs if index >= 0 and not litert_ops.is_constant(model, index)]
        for detail, index in zip(alone.get_input_details(), inputs):
            alone.resize_tensor_input(detail['index'], whole.get_tensor(index).shape)
        alone.allocate_tensors()
        for detail, index in zip(alone.get_input_details(), inputs):
            alone.set_tensor(detail['index'], whole.get_tensor(index))
        alone.invoke()
        expected = whole.get_tensor(operator.outputs[0])
        np.testing.assert_allclose(alone.get_tensor(alone.get_output_details()[0]['index']), expected,
                                   rtol=1e-5, atol=1e-5 * np.abs(expected).max())
