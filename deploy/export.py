"""Export a network for serving (SavedModel, TFLite, ONNX) and predict top-5 classes.

What is exported is the network's own inference graph (myconv2d.py folds every batch norm into the
conv before it; dropout is gone), frozen with the checkpoint's values. The serving signature takes
uint8 RGB images [N, S, S, 3] and returns `probabilities`, `top5` (int32 class indices) and `logits`.

The int8 file's signature returns the `logits` alone: its quantized network ends there. int8 gives an op
that needs its inputs and output on one scale (the SELECT_V2 of `top_k_classes`) that scale for its
inputs too, and the select's range stops below the top score: the logits were clipped where top-1 is
decided. Softmax and top-5 of the int8 file's logits are the caller's, in float. A quantized file is
checked against the float file on held-back images (deploy/agreement.py).
"""
import os
import tempfile
from unittest import mock

import compat  # noqa: F401  (must come before TensorFlow)
import numpy as np
import tensorflow as tf
from tensorpack.predict import OfflinePredictor, PredictConfig
from tensorpack.tfutils.argscope import argscope
from tensorpack.tfutils.tower import TowerContext
from tensorpack.utils import logger

from data import imagenet_classes
from deploy import agreement
from deploy.calibration import calibration_and_held_back
from runtime.session import without_graph_optimization
from weights.checkpoint import CheckpointError, checkpoint_shapes, resolve_checkpoint
from weights.state_dict import is_state_dict, session_init, state_dict_num_classes
from imagenet_utils import DataError, decode_image
from myconv2d import BN_EPSILON, ConvBN, DepthConv, SELayer

tfv1 = tf.compat.v1

SERVING_OUTPUTS = ('probabilities', 'top5', 'logits')
INT8_OUTPUTS = ('logits',)
ONNX_OPSET = 17
QUANTIZE_MODES = ('none', 'dynamic', 'int8')


# ---------------------------------------------------------------- images

def load_rgb_batch(paths, model):
    """Images as the serving signature takes them: uint8 RGB [N, S, S, 3], preprocessed as `model` evaluates."""
    augmentor = model.file_augmentor()
    return np.stack([augmentor.augment(decode_image(path))[..., ::-1] for path in paths])


# ---------------------------------------------------------------- the inference network

def checkpoint_num_classes(model_class, checkpoint):
    """The number of classes of a checkpoint (prefix, log directory, .npz or PyTorch state dict): its
    classifier bias's length."""
    if is_state_dict(checkpoint):
        return state_dict_num_classes(model_class, checkpoint)
    path = resolve_checkpoint(checkpoint)
    classifier_bias = model_class.scope + '/' + model_class.classifier_bias
    shapes = checkpoint_shapes(path)
    if classifier_bias not in shapes:
        raise CheckpointError('{} has no {}: not a checkpoint of {}'.format(
            path, classifier_bias, model_class.__name__))
    return shapes[classifier_bias][0]


def top_k_classes(scores, k):
    """`tf.math.top_k(scores, k).indices` by k rounds of argmax, each marking the class it took below the
    lowest score. LiteRT's TOPK_V2 gives its output no shape when the batch is dynamic, which its
    CompiledModel API can not run; a finite mark keeps an int8 model's quantization range."""
    classes = tf.range(int(scores.shape[-1]))
    taken_mark = tf.reduce_min(scores, -1, keepdims=True) - 1
    indices = []
    for _ in range(k):
        indices.append(tf.argmax(scores, -1, output_type=tf.int32))
        scores = tf.where(tf.equal(classes, indices[-1][:, None]), taken_mark, scores)
    return tf.stack(indices, 1)


def serving_graph(model, fold_bn=True):
    """The inference network (batch norm folded, no dropout) on uint8 RGB `images`, in a new graph.

    The BGR order and scaling of `image_preprocess` are folded into the first conv's kernel (see
    `ImageNetModel.logits_folding_preprocessing`): no channel reversal or scaling runs on the images, and
    the layers after a Ghost module take its output by parts (`myconv2d.convolve_by_parts`). With
    `fold_bn=False` batch norm stays apart, for converters that fold it themselves, and the Ghost
    modules' outputs are concatenated (int8 keeps its precision on whole sums, not partial ones).
    """
    size = model.image_shape
    with tf.Graph().as_default() as graph, TowerContext('', is_training=False), \
            argscope([ConvBN, DepthConv, SELayer], fold_bn=fold_bn):
        images = tfv1.placeholder(tf.uint8, [None, size, size, 3], 'images')
        logits = tf.identity(model.logits_folding_preprocessing(images, 'RGB'), name='logits')
        tf.nn.softmax(logits, name='probabilities')
        tf.identity(top_k_classes(logits, min(5, model.num_classes)), name='top5')   # the order of probabilities
    return graph


def frozen_serving_graph(model, checkpoint, fold_bn=True, outputs=SERVING_OUTPUTS, dead_channels_constant=False):
    """`serving_graph` with the checkpoint's values as constants, cut to the nodes `outputs` names (with
    `dead_channels_constant`, see `hold_dead_channels_constant`); CheckpointError if it does not fit."""
    graph = serving_graph(model, fold_bn)
    with graph.as_default(), tfv1.Session(graph=graph, config=without_graph_optimization()) as sess:
        session_init(checkpoint, model).init(sess)
        if dead_channels_constant:
            hold_dead_channels_constant(sess)
        weights = sess.run(weights_of_the_images_ops(graph))
        frozen = tfv1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), list(outputs))
    return with_weights_constant(frozen, weights, outputs)


def weights_of_the_images_ops(graph):
    """{name: tensor} of every value the images' ops take that does not depend on the images and is not a
    constant: the variables' reads, and what is computed from them (a kernel with its batch norm folded,
    GhostNetV3's fused branches, a part of either)."""
    fed = image_dependent_ops(graph)
    return {tensor.name: tensor for op in fed for tensor in op.inputs
            if tensor.op not in fed and tensor.op.type != 'Const'}


def with_weights_constant(graph_def, weights, outputs):
    """`graph_def` with the `weights` ({tensor name: value}) as constants in place of the ops that computed
    them: the converters then have nothing to fold (LiteRT's left some of V3's fused kernels as ops, which
    XNNPACK does not take), and a call computes no weight."""
    evaluated = tfv1.GraphDef()
    evaluated.CopyFrom(graph_def)
    constant_names = {name: name.replace(':', '/evaluated_') for name in weights}
    for name, value in weights.items():
        node = evaluated.node.add(name=constant_names[name], op='Const')
        node.attr['dtype'].type = tf.as_dtype(value.dtype).as_datatype_enum
        node.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(value))
    for node in evaluated.node:
        node.input[:] = [constant_names.get(name if ':' in name else name + ':0', name) for name in node.input]
    return tfv1.graph_util.extract_sub_graph(evaluated, list(outputs))


def image_dependent_ops(graph):
    """The ops whose outputs depend on a placeholder (the images)."""
    pending = [op for op in graph.get_operations() if op.type == 'Placeholder']
    dependent = set(pending)
    while pending:
        for output in pending.pop().outputs:
            for consumer in output.consumers():
                if consumer not in dependent:
                    dependent.add(consumer)
                    pending.append(consumer)
    return dependent


def hold_dead_channels_constant(sess):
    """Batch norm's scale set to 0 where its moving variance is below its epsilon, so the channel is its
    shift: its input was constant in training (a dead ReLU before a Ghost module's cheap operation), and
    the gain gamma / sqrt(epsilon), hundreds, would multiply int8's rounding errors of that constant. The
    float output moves by at most gamma * sqrt(variance / epsilon)."""
    variables = {variable.op.name: variable for variable in tfv1.global_variables()}
    gammas = {name[:-len('variance/EMA')] + 'gamma': name for name in variables if name.endswith('/variance/EMA')}
    values = sess.run({gamma: (variables[gamma], variables[variance]) for gamma, variance in gammas.items()
                       if gamma in variables})
    for gamma, (scale, variance) in values.items():   # loaded through its initializer: no op added per batch norm
        variables[gamma].load(np.where(variance < BN_EPSILON, 0., scale).astype(scale.dtype), sess)


def serving_function(graph_def, outputs=SERVING_OUTPUTS):
    """A TF2 function of the frozen graph: uint8 RGB images to {'probabilities', 'top5', 'logits'} (or
    to the nodes `outputs` names)."""
    wrapped = tfv1.wrap_function(lambda: tfv1.import_graph_def(graph_def, name=''), [])
    tensor = wrapped.graph.get_tensor_by_name
    return wrapped.prune(tensor('images:0'), {name: tensor(name + ':0') for name in outputs})


# ---------------------------------------------------------------- SavedModel, TFLite, ONNX

def file_size(path):
    """Bytes in a file, or in all files under a directory."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def log_written(what, path):
    """Say where `what` was written and its size (a result: on stdout)."""
    print('Wrote {} to {} ({:.2f} MB)'.format(what, path, file_size(path) / 2 ** 20))


def export_saved_model(model, checkpoint, directory, fold_bn=True):
    """The inference network of `model` with the checkpoint's values as a SavedModel in `directory`."""
    return save_saved_model(frozen_serving_graph(model, checkpoint, fold_bn), model.image_shape, directory)


def export_int8_saved_model(model, checkpoint, directory):
    """The SavedModel an int8 file is quantized from: batch norm apart (see serving_graph), dead channels
    constant (see hold_dead_channels_constant), the logits its only output (see the module's doc)."""
    graph_def = frozen_serving_graph(model, checkpoint, False, INT8_OUTPUTS, dead_channels_constant=True)
    return save_saved_model(graph_def, model.image_shape, directory, INT8_OUTPUTS)


def eager_again():
    """Eager execution, which saving a SavedModel needs: tensorpack's training turns it off for the whole
    process and leaves its graph the default one (a program may train, then export); RuntimeError inside a
    graph context, where eager execution can not be had."""
    if tf.executing_eagerly():
        return
    try:
        tfv1.reset_default_graph()      # TensorFlow turns eager execution on only without a default graph
        tfv1.enable_eager_execution()
    except (AssertionError, ValueError):
        raise RuntimeError('export needs eager execution: call it outside any tf.Graph or tf.Session '
                           'context') from None


def save_saved_model(graph_def, size, directory, outputs=SERVING_OUTPUTS):
    """A frozen serving graph of S x S images as a SavedModel with a `serving_default` signature
    (whose outputs are the nodes `outputs` names)."""
    eager_again()
    module = tf.Module()
    module.network = serving_function(graph_def, outputs)
    module.serve = tf.function(lambda images: module.network(images), input_signature=[
        tf.TensorSpec([None, size, size, 3], tf.uint8, name='images')])
    tf.saved_model.save(module, directory, signatures={'serving_default': module.serve.get_concrete_function()})
    log_written('SavedModel (uint8 RGB [N, {0}, {0}, 3] -> {1})'.format(size, ', '.join(outputs)), directory)
    return directory


def save_onnx(graph_def, path):
    """A frozen serving graph as an ONNX model (tf2onnx, opset ONNX_OPSET) with the same input and outputs."""
    import onnx  # imported here: the training-only Horovod stack (.ci/horovod) has no ONNX tools
    try:
        # tf2onnx copies the whole graph, weights included, before each of its optimizers, to go on without
        # one that fails: 18 of ResNet-50's 29 s. Set, TF2ONNX_CATCH_ERRORS turns the copies off; should an
        # optimizer fail then, the conversion runs again with them.
        with mock.patch.dict(os.environ, TF2ONNX_CATCH_ERRORS='FALSE'):
            proto = onnx_model(graph_def)
    except Exception as error:  # noqa: BLE001  (any optimizer's failure)
        logger.info('tf2onnx failed without its copies ({}: {}); converting again with them'.format(
            type(error).__name__, error))
        proto = onnx_model(graph_def)
    onnx.save(proto, path)
    log_written('ONNX model (opset {})'.format(ONNX_OPSET), path)
    return path


def onnx_model(graph_def):
    """tf2onnx's conversion of a frozen serving graph, its input and outputs named as the graph's."""
    import tf2onnx
    names = ('images',) + SERVING_OUTPUTS
    proto, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=['images:0'],
                                              output_names=[name + ':0' for name in SERVING_OUTPUTS],
                                              opset=ONNX_OPSET)
    rename_values(proto.graph, {name + ':0': name for name in names})
    return proto


def rename_values(graph, names):
    """Rename an ONNX graph's values (its inputs, outputs and node connections) by `names`."""
    for value in list(graph.input) + list(graph.output):
        value.name = names.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [names.get(name, name) for name in node.input]
        node.output[:] = [names.get(name, name) for name in node.output]


def export_tflite(saved_model_dir, path, quantize='none', representative_images=None):
    """Convert a SavedModel to a TFLite flatbuffer, its gates computed as early as they can be
    (`litert_schedule`); int8 calibrates on uint8 RGB `representative_images`."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError('quantize must be one of {}, got {!r}'.format(QUANTIZE_MODES, quantize))
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    if quantize != 'none':
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == 'int8':
        if representative_images is None or not len(representative_images):
            raise DataError('int8 quantization needs representative images')
        converter.representative_dataset = lambda: ([image[np.newaxis]] for image in representative_images)
    from deploy.litert_schedule import schedule_gates_first  # here: the training-only Horovod stack has no LiteRT
    with open(path, 'wb') as f:
        f.write(converter.convert())
    schedule_gates_first(path)
    log_written('TFLite flatbuffer (quantize={})'.format(quantize), path)
    return path


def export(model, checkpoint, out_dir, tflite=False, quantize='none', representative=None, name='ghostnet',
           onnx_model=False, validate=None, bounds=(agreement.MIN_AGREEMENT, agreement.MAX_ERROR_RISE)):
    """`--export`: OUT_DIR/saved_model; with `tflite` or quantization OUT_DIR/NAME.tflite; with quantization
    OUT_DIR/NAME_QUANT.tflite too, checked against NAME.tflite (see `export_quantized`); with `onnx_model`
    OUT_DIR/NAME.onnx. Returns the paths written."""
    check_quantization_flags(quantize, representative, validate)
    if quantize != 'none':   # bad image folders are named before anything is written
        images = calibration_and_held_back(representative, validate, model.num_classes, quantize == 'int8')
    make_out_dir(out_dir)
    graph_def = frozen_serving_graph(model, checkpoint)
    written = [save_saved_model(graph_def, model.image_shape, os.path.join(out_dir, 'saved_model'))]
    if tflite or quantize != 'none':
        written.append(export_tflite(written[0], os.path.join(out_dir, name + '.tflite')))
    if quantize != 'none':
        written.append(export_quantized(model, checkpoint, written[0], written[-1], quantize, images, bounds))
    if onnx_model:
        written.append(save_onnx(graph_def, os.path.join(out_dir, name + '.onnx')))
    return written


def check_quantization_flags(quantize, representative, validate):
    """DataError when int8 has no images to calibrate on, or quantization none to be checked on."""
    if quantize == 'int8' and not representative:
        raise DataError('--quantize int8 needs --representative DIR, a folder of images to calibrate on')
    if quantize == 'dynamic' and not (representative or validate):
        raise DataError('--quantize dynamic needs --validate DIR (or --representative DIR): images to check '
                        'the quantized file against the float file on')


def export_quantized(model, checkpoint, saved_model, float_file, quantize, images, bounds):
    """FLOAT_FILE's NAME_QUANT.tflite beside it: dynamic from `saved_model`, int8 from
    `export_int8_saved_model`. `images` are (calibration paths, (held-back paths, labels or None)), see
    `calibration_and_held_back`. The top-1 agreement with the float file and both errors on the held-back
    images are printed; agreement.QuantizationLoss, naming both files (kept), when they miss `bounds`
    (least agreement, most error rise)."""
    calibration, (held_back, labels) = images
    path = float_file[:-len('.tflite')] + '_{}.tflite'.format(quantize)
    with tempfile.TemporaryDirectory() as workdir:
        if quantize == 'int8':
            logger.info('Calibrating int8 on {} images, checking on {} held back'.format(
                len(calibration), len(held_back)))
            source = export_int8_saved_model(model, checkpoint, os.path.join(workdir, 'saved_model'))
            export_tflite(source, path, quantize, load_rgb_batch(calibration, model))
        else:
            export_tflite(saved_model, path, quantize)
    measured = agreement.measure(float_file, path, load_rgb_batch(held_back, model), labels)
    print('{} against {}: {}'.format(path, float_file, agreement.describe(measured)))   # a result
    try:
        agreement.check(measured, *bounds)
    except agreement.QuantizationLoss as e:
        raise agreement.QuantizationLoss('--quantize {}: {} strays from {} (both kept): {}'.format(
            quantize, path, float_file, e)) from None
    return path


def make_out_dir(out_dir):
    """OUT_DIR made if needed; DataError naming it when it can not be."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise DataError('--export {}: can not make this folder: {}'.format(out_dir, e.strerror)) from None


# ---------------------------------------------------------------- prediction

def class_names(meta_dir, num_classes):
    """Per class: its `synset_words.txt` line, else its `synsets.txt` wnid; without those, ImageNet-1k's
    names for 1,000 classes, else the index."""
    for filename in ('synset_words.txt', 'synsets.txt'):
        path = os.path.join(meta_dir or '', filename)
        if meta_dir and os.path.isfile(path):
            with open(path) as f:
                names = [line.strip() for line in f if line.strip()]
            if len(names) == num_classes:
                return names
            logger.warn('{} has {} classes, the model {}; showing indices'.format(
                path, len(names), num_classes))
            break
    if num_classes == imagenet_classes.NUM_CLASSES:
        return imagenet_classes.synset_words()
    return [str(index) for index in range(num_classes)]


def predict(model, checkpoint, paths, names=None):
    """`--predict`: [(path, [(class index, name, probability)] * 5)] from the inference graph.

    `names` has one name per class (default: the class indices).
    """
    images = load_rgb_batch(paths, model)[..., ::-1].astype(np.float32)
    predictor = OfflinePredictor(PredictConfig(
        model=model, session_init=session_init(checkpoint, model), input_names=['input'], output_names=['prob']))
    names = names or [str(index) for index in range(model.num_classes)]
    probabilities, = predictor(images)
    return [(path, [(int(c), names[c], float(p[c])) for c in np.argsort(-p)[:5]])
            for path, p in zip(paths, probabilities)]
