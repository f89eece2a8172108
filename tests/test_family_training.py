"""GhostNetV2 and GhostNetV3 trained from scratch by main.py on a small sample, then exported (V3's branches
fused) and quantized to int8; their authors' recipes as the flags' defaults; GhostNet (PyTorch) fine-tuned from a
timm file."""
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from safetensors.numpy import save_file

import main
from conftest import run_main_py
from data.samples import write_sample_dataset
from deploy import export
from deploy.calibration import image_files
from runtime.session import without_graph_optimization
from test_family import SMALL_FAMILY_SIZE, family_model, graph_input, small_family_graph
from timm_fixtures import load_fixture, seeded_images, seeded_state_dict
from weights.state_dict import session_init

tfv1 = tf.compat.v1


@pytest.fixture(scope='module')
def family_sample(tmp_path_factory):
    return write_sample_dataset(str(tmp_path_factory.mktemp('family_sample')), num_classes=4, train_per_class=16,
                                val_per_class=4, image_size=64)


@pytest.mark.parametrize('arch', ['ghostnetv2', 'ghostnetv3'])
def test_trains_on_a_sample_and_exports_the_network_it_trained(arch, family_sample, tmp_path):
    """A short training from scratch; then GhostNetV3's export (its branches fused) against its training graph in
    inference mode (its branches apart), and GhostNetV2's int8 export against its float one (V3's int8 file is
    V2's ops with other constants; V2's float export is held to timm's logits in test_family)."""
    logdir = str(tmp_path / 'log')
    result = run_main_py('--arch', arch, '--width_ratio', '0.5', '--image_size', str(SMALL_FAMILY_SIZE),
                         '--batch', '16', '--workers', '1', '--epochs', '1', '--warmup_epochs', '0',
                         '--data_dir', family_sample, '--logdir', logdir, verbose=False)
    assert result.returncode == 0, result.stderr
    checkpoint = tf.train.latest_checkpoint(logdir)
    moving = tf.train.load_variable(checkpoint, '{}/Conv2d_5_up_pointwise/dfc/conv/bn/mean/EMA'.format(
        family_model(arch, 1.0).scope))
    assert np.abs(moving).max() > 0     # trained: batch norm's statistics moved from their start (zeros)
    if arch == 'ghostnetv2':
        model = family_model(arch, 0.5, SMALL_FAMILY_SIZE, num_classes=4)
        assert_int8_export_follows_float(model, checkpoint, family_sample, str(tmp_path / 'export'))
        return
    images = seeded_images(4, size=SMALL_FAMILY_SIZE)
    graph, model = small_family_graph(arch, 0.5, reparameterize=False, num_classes=4)
    with graph.as_default(), tfv1.Session(config=without_graph_optimization()) as sess:
        session_init(checkpoint, model).init(sess)
        trained = sess.run(model.end_points['Logits'], {'input:0': graph_input(images)})
    exported = export.serving_function(export.frozen_serving_graph(model, checkpoint))(tf.constant(images))
    np.testing.assert_allclose(exported['logits'].numpy(), trained, rtol=0, atol=1e-4 * np.abs(trained).max())


def test_ghostnet_pytorch_fine_tunes_from_a_timm_file(family_sample, tmp_path):
    """Training that starts from a timm file (--load) on a sample of 4 classes: the trained stem still follows the
    file's, and the classifier is the sample's (4 classes)."""
    keys = load_fixture()['ghostnet-pytorch', 0.5]['keys']
    weights = seeded_state_dict(keys)
    timm_file = str(tmp_path / 'ghostnet_050.safetensors')
    save_file(weights, timm_file)
    logdir = str(tmp_path / 'log')
    result = run_main_py('--arch', 'ghostnet-pytorch', '--width_ratio', '0.5', '--load', timm_file, '--image_size',
                         str(SMALL_FAMILY_SIZE), '--batch', '16', '--workers', '1', '--epochs', '1', '--warmup_epochs',
                         '0', '--data_dir', family_sample, '--logdir', logdir, verbose=False)
    assert result.returncode == 0, result.stderr
    checkpoint = tf.train.latest_checkpoint(logdir)
    model = family_model('ghostnet-pytorch', 0.5)
    stem = tf.train.load_variable(checkpoint, model.scope + '/Conv2d_0/W')
    loaded = weights['conv_stem.weight'].transpose(2, 3, 1, 0)
    assert np.corrcoef(stem.ravel(), loaded.ravel())[0, 1] > 0.99 and np.abs(stem - loaded).max() > 0
    classifier = [shape for name, shape in tf.train.list_variables(checkpoint)
                  if name.startswith(model.classifier_scope + '/') and len(shape) > 1]
    assert classifier and all(shape[-1] == 4 for shape in classifier), classifier


def assert_int8_export_follows_float(model, checkpoint, data_dir, out_dir):
    """int8 export (calibrated on the sample's training images): int8 tensors, and logits that follow the float
    file's on the validation images."""
    float_file, int8_file = export.export(model, checkpoint, out_dir, quantize='int8',
                                          representative=data_dir + '/train', validate=data_dir + '/val',
                                          bounds=(0, 1), name=model.scope.lower())[1:]
    images = export.load_rgb_batch(image_files(data_dir + '/val'), model)
    logits = {path: Interpreter(path).get_signature_runner()(images=images)['logits']
              for path in (float_file, int8_file)}
    correlation = np.corrcoef(logits[float_file].ravel(), logits[int8_file].ravel())[0, 1]
    print('{}: int8 logits against float: correlation {:.4f}'.format(int8_file, correlation))
    assert correlation > 0.9
    interpreter = Interpreter(int8_file)
    interpreter.allocate_tensors()
    assert {detail['dtype'] for detail in interpreter.get_tensor_details()} >= {np.int8}


def test_v2_and_v3_default_to_their_authors_recipes():
    v2, v3 = (main.parse_args(['--fake', '--arch', arch]) for arch in ('ghostnetv2', 'ghostnetv3'))
    assert (v2.optimizer, v2.batch, v2.lr * v2.batch / 256, v2.momentum, v2.epochs, v2.warmup_epochs, v2.lr_schedule,
            v2.weight_decay, v2.label_smoothing, v2.dropout_keep_prob) == (
        'rmsprop', 1024, 0.064, 0.9, 450, 3, 'exponential', 1e-5, 0.1, 0.8)
    assert (v3.optimizer, v3.nesterov, v3.batch, v3.lr * v3.batch / 256, v3.epochs, v3.warmup_epochs,
            v3.lr_schedule, v3.weight_decay, v3.label_smoothing, v3.dropout_keep_prob) == (
        'sgd', 1, 1024, 0.05, 300, 3, 'cosine', 2e-5, 0.1, 1.0)
    schedule = main.learning_rate_schedule(v2, steps_per_epoch=10)    # x0.973 every 24 steps from step 0
    assert schedule.value_at(15) == pytest.approx(0.064 / 2)          # warming up to 0.064 over 30 steps
    assert schedule.value_at(30) == pytest.approx(0.064 * 0.973)
    assert schedule.value_at(100) == pytest.approx(0.064 * 0.973 ** 4)
    assert schedule.value_at(4499) == pytest.approx(0.064 * 0.973 ** 187)


def test_rmsprop_takes_timms_rmsproptf_step():
    """Two steps on f(x) = x^2 / 2 (gradient x) from x = 1, written out: the mean square starts at 1, epsilon is
    inside the square root, momentum accumulates the scaled step."""
    model = family_model('ghostnetv2', 1.0)
    with tf.Graph().as_default():
        x = tfv1.get_variable('x', initializer=1.0)
        step = model.get_optimizer().minimize(x * x / 2)
        learning_rate, = [v for v in tfv1.global_variables() if v.op.name == 'learning_rate']
        with tfv1.Session() as sess:
            sess.run(tfv1.global_variables_initializer())
            learning_rate.load(0.01, sess)
            values = [sess.run(step) or sess.run(x) for _ in range(2)]
    square, moment, expected = 1.0, 0.0, [1.0]
    for _ in range(2):
        gradient = expected[-1]
        square = 0.9 * square + 0.1 * gradient ** 2
        moment = 0.9 * moment + 0.01 * gradient / np.sqrt(square + 1e-3)
        expected.append(expected[-1] - moment)
    np.testing.assert_allclose(values, expected[1:], rtol=1e-6)
