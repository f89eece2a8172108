"""export.py: the SavedModel and TFLite of the folded inference graph against the tensorpack graph with
batch norm unfolded, on a randomized checkpoint."""
import contextlib
import io
import os
from unittest import mock

import cv2
import numpy as np
import onnxruntime
import pytest
from ai_edge_litert.compiled_model import CompiledModel
from ai_edge_litert.cpu_options import CpuOptions
from ai_edge_litert.hardware_accelerator import HardwareAccelerator
from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert.options import Options
import tensorflow as tf
from tensorpack.tfutils.argscope import argscope
from tensorpack.tfutils.tower import TowerContext

from deploy import agreement, export
from deploy.calibration import calibration_and_held_back
from ghostnet import HEAD_CHANNELS, GhostNet
from myconv2d import ConvBN, DepthConv, SELayer
from weights.checkpoint import CheckpointError
from imagenet_utils import DataError
from conftest import main_error, run_main

tfv1 = tf.compat.v1

TOLERANCE = 1e-3
# Narrow and small, with Ghost ratios 1-4 (slices where ratio 3 leaves spare cheap channels)
# and cheap kernels 1-5, so every branch of the Ghost module is exported.
SMALL = dict(num_classes=10, width=0.5, image_shape=64,
             ratio_code=[2, 3, 4, 2, 3, 2, 3, 4, 2, 2, 3, 2, 1, 2, 3, 2],
             dw_code=[3, 5, 3, 1, 3, 3, 5, 3, 3, 3, 3, 5, 3, 3, 3, 3])
RANDOMIZED_SUFFIXES = ('/gamma', '/beta', '/mean/EMA', '/variance/EMA', '/b')


def write_jpegs(directory, count=12, seed=0):
    """`count` JPEGs of various sizes with blobs and gradients (one grayscale); returns their paths."""
    rng = np.random.RandomState(seed)
    paths = []
    for index in range(count):
        height, width = rng.randint(48, 320, size=2)
        noise = cv2.GaussianBlur(rng.uniform(0, 255, (height, width, 3)).astype(np.float32), (0, 0), 5)
        ramp = np.linspace(0, rng.uniform(-120, 120), width, dtype=np.float32)[np.newaxis, :, np.newaxis]
        image = np.clip((noise - noise.mean()) * 4 + 128 + ramp, 0, 255).astype(np.uint8)
        cv2.circle(image, (int(rng.randint(width)), int(rng.randint(height))),
                   int(rng.randint(5, 40)), tuple(int(c) for c in rng.randint(0, 256, 3)), -1)
        if index == count - 1:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        paths.append(str(directory / 'image_{:02d}.jpg'.format(index)))
        cv2.imwrite(paths[-1], image)
    return paths


def randomized(name, shape, rng):
    """Non-trivial batch-norm statistics, scales, shifts and biases for variable `name`."""
    if name.endswith('/gamma'):
        return rng.uniform(0.5, 1.5, shape)
    if name.endswith('/variance/EMA'):
        return rng.uniform(0.5, 2.0, shape)
    return rng.normal(0, 0.2, shape)


def randomized_checkpoint(model, directory, images_rgb, seed=0):
    """Save `model` with random weights and batch norm; returns (checkpoint, logits of images from the
    tensorpack graph in inference mode with batch norm unfolded)."""
    rng = np.random.RandomState(seed)
    with tf.Graph().as_default():
        tfv1.set_random_seed(seed)
        inputs = [tfv1.placeholder(spec.dtype, spec.shape, spec.name)
                  for spec in model.get_input_signature()]
        with TowerContext('', is_training=False), argscope([ConvBN, DepthConv, SELayer], fold_bn=False):
            model.build_graph(*inputs)
        with tfv1.Session() as sess:
            sess.run(tfv1.global_variables_initializer())
            sess.run([v.assign(randomized(v.op.name, v.shape, rng).astype(np.float32))
                      for v in tfv1.global_variables() if v.op.name.endswith(RANDOMIZED_SUFFIXES)])
            feed = {inputs[0]: images_rgb[..., ::-1].astype(np.float32)}
            center_classifier(sess, model, feed)
            checkpoint = tfv1.train.Saver().save(sess, str(directory / 'model'))
            logits = sess.run(model.end_points['Logits'], feed)
    return checkpoint, logits


def center_classifier(sess, model, feed, gain=10):
    """Scale the classifier and cancel its response to the images' mean features, so top-1 varies.

    A random network's pooled features share a large common part; without this every test
    image would get the same class and the top-1 comparisons would prove little.
    """
    features = sess.run(model.end_points['Conv2d_18'], feed).reshape(-1, HEAD_CHANNELS).mean(0)
    variables = {v.op.name: v for v in tfv1.global_variables()}
    kernel = variables[model.scope + '/Logits/Conv2d_1c_1x1/W']
    bias = variables[model.scope + '/Logits/Conv2d_1c_1x1/b']
    scaled = sess.run(kernel) * gain
    sess.run([kernel.assign(scaled), bias.assign(-features @ scaled.reshape(HEAD_CHANNELS, -1))])


class Case:
    """A model, its randomized checkpoint, test images and the tensorpack graph's logits on them."""

    def __init__(self, model, directory, paths):
        self.model = model
        self.paths = paths
        self.images = export.load_rgb_batch(paths, model)
        self.checkpoint, self.logits = randomized_checkpoint(model, directory, self.images)


def assert_parity(logits, reference):
    """Logits within TOLERANCE of the tensorpack graph's, same top-1."""
    print('max |logits - tensorpack| = {:.2e} (logits up to {:.2f})'.format(
        np.abs(logits - reference).max(), np.abs(reference).max()))
    assert len(set(reference.argmax(1))) > 1, 'the test images should not all get one class'
    np.testing.assert_allclose(logits, reference, rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(logits.argmax(1), reference.argmax(1))


def run_tflite(path, images):
    """The serving signature of a TFLite flatbuffer in LiteRT on uint8 RGB images."""
    return Interpreter(path, num_threads=2).get_signature_runner()(images=images)


@pytest.fixture(scope='module')
def jpegs(tmp_path_factory):
    return write_jpegs(tmp_path_factory.mktemp('jpegs'))


@pytest.fixture(scope='module')
def small(tmp_path_factory, jpegs):
    return Case(GhostNet(**SMALL), tmp_path_factory.mktemp('small'), jpegs)


@pytest.fixture(scope='module')
def small_export(tmp_path_factory, small):
    """export.export of the small case with a float TFLite; (written paths, the lines it printed)."""
    out_dir = str(tmp_path_factory.mktemp('export'))
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        written = export.export(small.model, small.checkpoint, out_dir, tflite=True, onnx_model=True)
    return written, printed.getvalue().splitlines()


def test_export_writes_and_prints_paths_and_sizes(small_export):
    written, messages = small_export
    saved_model, tflite, onnx_model = written
    assert os.path.isfile(os.path.join(saved_model, 'saved_model.pb'))
    assert tflite.endswith('ghostnet.tflite') and os.path.getsize(tflite) > 0
    assert onnx_model.endswith('ghostnet.onnx') and os.path.getsize(onnx_model) > 0
    for path in written:
        assert any(path in message and 'MB' in message for message in messages), messages


def test_saved_model_matches_tensorpack(small, small_export):
    signature = tf.saved_model.load(small_export[0][0]).signatures['serving_default']
    outputs = {name: value.numpy() for name, value in signature(images=tf.constant(small.images)).items()}
    assert_parity(outputs['logits'], small.logits)
    np.testing.assert_allclose(outputs['probabilities'], tf.nn.softmax(small.logits), atol=1e-4)
    assert outputs['top5'].dtype == np.int32 and outputs['top5'].shape == (len(small.paths), 5)
    np.testing.assert_array_equal(outputs['top5'][:, 0], small.logits.argmax(1))


def test_onnx_matches_tensorpack_in_onnxruntime(small, small_export):
    session = onnxruntime.InferenceSession(small_export[0][2])
    assert [value.name for value in session.get_inputs()] == ['images']
    outputs = dict(zip([value.name for value in session.get_outputs()], session.run(None, {'images': small.images})))
    assert sorted(outputs) == ['logits', 'probabilities', 'top5']
    assert_parity(outputs['logits'], small.logits)
    np.testing.assert_allclose(outputs['probabilities'], tf.nn.softmax(small.logits), atol=1e-4)
    np.testing.assert_array_equal(outputs['top5'][:, 0], small.logits.argmax(1))


def test_onnx_conversion_runs_again_with_tf2onnx_copies_when_it_fails_without(small, tmp_path):
    convert, catch_errors = export.onnx_model, []

    def failing_without_copies(graph_def):
        catch_errors.append(os.environ.get('TF2ONNX_CATCH_ERRORS'))
        if len(catch_errors) == 1:
            raise ValueError('an optimizer failed')
        return convert(graph_def)
    with mock.patch.object(export, 'onnx_model', failing_without_copies):
        path = export.save_onnx(export.frozen_serving_graph(small.model, small.checkpoint), str(tmp_path / 'm.onnx'))
    assert catch_errors == ['FALSE', os.environ.get('TF2ONNX_CATCH_ERRORS')]
    assert_parity(onnxruntime.InferenceSession(path).run(['logits'], {'images': small.images})[0], small.logits)


def test_float_tflite_matches_tensorpack(small, small_export):
    outputs = run_tflite(small_export[0][1], small.images)
    assert_parity(outputs['logits'], small.logits)
    np.testing.assert_allclose(outputs['probabilities'], tf.nn.softmax(small.logits), atol=1e-4)
    np.testing.assert_array_equal(outputs['top5'][:, 0], small.logits.argmax(1))


def test_float_tflite_network_runs_in_one_xnnpack_partition(small_export):
    """An op XNNPACK lacks inside the network (SPLIT_V did, in the SE layers) would cut it into
    partitions run one after another."""
    interpreter = Interpreter(small_export[0][1], num_threads=2)
    interpreter.allocate_tensors()
    op_names = [op['op_name'] for op in interpreter._get_ops_details()]
    assert op_names.count('DELEGATE') == 1, op_names


def run_compiled_model(path, images):
    """The same signature through LiteRT's CompiledModel API (XNNPACK), resized to the batch."""
    model = CompiledModel.from_file(path, options=Options(hardware_accelerators=HardwareAccelerator.CPU,
                                                           cpu_options=CpuOptions(num_threads=2)))
    model.resize_input_tensor_by_name('serving_default', 'images', images.shape)
    inputs, outputs = model.create_input_buffers(0), model.create_output_buffers(0)
    inputs[0].write(images)
    model.run_by_index(0, inputs, outputs)
    details = model.get_output_tensor_details('serving_default')
    return {name: buffer.read(int(np.prod(details[name]['shape'])), details[name]['dtype']).reshape(
        details[name]['shape']) for name, buffer in zip(model.get_signature_list()['serving_default']['outputs'],
                                                         outputs)}


def test_float_tflite_runs_in_litert_compiled_model(small, small_export):
    outputs = run_compiled_model(small_export[0][1], small.images)
    assert_parity(outputs['logits'], small.logits)
    np.testing.assert_allclose(outputs['probabilities'], tf.nn.softmax(small.logits), atol=1e-4)
    np.testing.assert_array_equal(outputs['top5'], run_tflite(small_export[0][1], small.images)['top5'])


@pytest.mark.parametrize('quantize', ['dynamic', 'int8'])
def test_quantized_file_is_written_beside_the_float_one_and_checked_on_held_back_images(small, quantize, tmp_path):
    jpegs = os.path.dirname(small.paths[0])
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        saved_model, float_file, path = export.export(small.model, small.checkpoint, str(tmp_path), quantize=quantize,
                                                      representative=jpegs, bounds=(0, 1))
    assert float_file.endswith('ghostnet.tflite') and path.endswith('ghostnet_{}.tflite'.format(quantize))
    # OUT/saved_model is the folded float network whatever the TFLite file is
    signature = tf.saved_model.load(saved_model).signatures['serving_default']
    assert_parity(signature(images=tf.constant(small.images))['logits'].numpy(), small.logits)
    outputs = run_tflite(path, small.images)
    assert sorted(outputs) == (['logits'] if quantize == 'int8' else ['logits', 'probabilities', 'top5'])
    assert np.isfinite(outputs['logits']).all() and outputs['logits'].shape == small.logits.shape
    # no class folders: agreement only, on the images calibration did not take (half of them for int8)
    held_back = sorted(small.paths) if quantize == 'dynamic' else None
    calibration, (held_back_paths, labels) = calibration_and_held_back(jpegs, None, 10, quantize == 'int8')
    assert labels is None and len(held_back_paths) == len(small.paths) - len(calibration)
    assert held_back is None or sorted(held_back_paths) == held_back
    images = export.load_rgb_batch(held_back_paths, small.model)
    expected = np.mean(run_tflite(float_file, images)['logits'].argmax(1) == run_tflite(path, images)['logits'].argmax(1))
    reported = [line for line in printed.getvalue().splitlines() if 'agreement' in line]
    assert reported == ['{} against {}: top-1 agreement {:.4f} on {} held-back images (no class folders: errors '
                      'unknown)'.format(path, float_file, expected, len(images))]


def test_calibration_is_drawn_across_class_folders(tmp_path):
    for label in range(3):
        for index in range(10):
            (tmp_path / 'class{}'.format(label)).mkdir(exist_ok=True)
            (tmp_path / 'class{}'.format(label) / '{}.png'.format(index)).write_bytes(b'')
    calibration, (held_back, labels) = calibration_and_held_back(str(tmp_path), None, 3)
    assert len(calibration) == 15 and len(held_back) == 15 and not set(calibration) & set(held_back)
    assert [os.path.basename(os.path.dirname(path)) for path in calibration[:6]] == ['class0', 'class1', 'class2'] * 2
    assert sorted(labels.tolist()) == sorted([0] * 5 + [1] * 5 + [2] * 5)
    assert all(path.endswith('class{}'.format(label) + os.sep + os.path.basename(path))
               for path, label in zip(held_back, labels))


def test_agreement_check_names_each_bound_missed():
    agreement.check(agreement.Agreement(100, 0.97, 0.10, 0.12))
    with pytest.raises(agreement.QuantizationLoss, match='agreement below 0.97$'):
        agreement.check(agreement.Agreement(100, 0.96, 0.10, 0.10))
    with pytest.raises(agreement.QuantizationLoss, match='error 0.1201 .float 0.1000.: error more than 0.02'):
        agreement.check(agreement.Agreement(100, 0.99, 0.10, 0.1201))


def test_int8_without_representative_images_fails_before_writing(small, tmp_path):
    with pytest.raises(DataError, match='representative'):
        export.export(small.model, small.checkpoint, str(tmp_path), quantize='int8')
    assert os.listdir(tmp_path) == []


def test_export_folder_that_can_not_be_made_is_named(small, tmp_path):
    (tmp_path / 'file').write_text('')
    with pytest.raises(DataError, match='--export .*file/out: can not make this folder'):
        export.export(small.model, small.checkpoint, str(tmp_path / 'file' / 'out'))


def test_full_size_saved_model_matches_tensorpack(tmp_path, jpegs):
    case = Case(GhostNet(), tmp_path, jpegs[:4])
    directory = export.export_saved_model(case.model, case.checkpoint, str(tmp_path / 'saved_model'))
    signature = tf.saved_model.load(directory).signatures['serving_default']
    assert_parity(signature(images=tf.constant(case.images))['logits'].numpy(), case.logits)


def test_predict_names_top5_from_synset_words(small, tmp_path):
    words = ['n{:08d} class number {}'.format(index, index) for index in range(SMALL['num_classes'])]
    (tmp_path / 'synset_words.txt').write_text('\n'.join(words) + '\n')
    results = export.predict(small.model, small.checkpoint, small.paths,
                             export.class_names(str(tmp_path), SMALL['num_classes']))
    assert [path for path, _ in results] == small.paths
    for (_, top5), logits in zip(results, small.logits):
        indices = [index for index, _, _ in top5]
        probabilities = [p for _, _, p in top5]
        assert indices[0] == logits.argmax() and probabilities == sorted(probabilities, reverse=True)
        assert [name for _, name, _ in top5] == [words[index] for index in indices]


def test_predict_rejects_a_file_that_is_not_an_image(small, tmp_path):
    not_image = tmp_path / 'notes.jpg'
    not_image.write_text('not a JPEG')
    with pytest.raises(DataError, match='notes.jpg'):
        export.predict(small.model, small.checkpoint, small.paths[:1] + [str(not_image)])


def test_class_names_fall_back_to_wnids_then_indices(tmp_path):
    (tmp_path / 'synsets.txt').write_text('n01\nn02\nn03\n')
    assert export.class_names(str(tmp_path), 3) == ['n01', 'n02', 'n03']
    assert export.class_names(str(tmp_path), 4) == ['0', '1', '2', '3']
    assert export.class_names(None, 2) == ['0', '1']


def test_checkpoint_of_another_width_is_refused_by_name(small, tmp_path):
    with pytest.raises(CheckpointError, match='does not fit'):
        export.export_saved_model(GhostNet(**dict(SMALL, width=1.0)), small.checkpoint, str(tmp_path / 'sm'))


def test_npz_checkpoint_and_class_count(small, tmp_path):
    reader = tf.train.load_checkpoint(small.checkpoint)
    npz = str(tmp_path / 'weights.npz')
    np.savez(npz, **{name + ':0': reader.get_tensor(name) for name in reader.get_variable_to_shape_map()})
    assert export.checkpoint_num_classes(GhostNet, npz) == export.checkpoint_num_classes(GhostNet, small.checkpoint) == 10
    directory = export.export_saved_model(small.model, npz, str(tmp_path / 'saved_model'))
    signature = tf.saved_model.load(directory).signatures['serving_default']
    assert_parity(signature(images=tf.constant(small.images))['logits'].numpy(), small.logits)


def small_flags(case):
    return ['--load', case.checkpoint, '--width_ratio', str(SMALL['width']),
            '--image_size', str(SMALL['image_shape']),
            '--dw_code_str', ','.join(map(str, SMALL['dw_code'])),
            '--ratio_code_str', ','.join(map(str, SMALL['ratio_code']))]


def test_cli_predict_prints_top5_per_image(small, capfd):
    out = run_main(capfd, '--predict', *small.paths[:2], *small_flags(small))
    lines = out.strip().splitlines()[-12:]
    for index in range(2):
        assert lines[6 * index] == small.paths[index]
        probability, name = lines[6 * index + 1].split()
        assert int(name) == small.logits[index].argmax()      # no metadata: class indices


def test_cli_predict_names_a_file_that_is_not_an_image(small, tmp_path, capfd):
    not_image = tmp_path / 'notes.JPEG'
    not_image.write_text('not a JPEG')
    assert str(not_image) in main_error(capfd, '--predict', str(not_image), *small_flags(small))
