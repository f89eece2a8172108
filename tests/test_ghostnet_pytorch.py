"""--arch ghostnet-pytorch against timm 1.0.31, without torch: the logits timm computed for seeded weights and
images (tests/data/timm_ghostnet.json, written by tests/timm_fixtures.py) from the network's graph and from
every exported format, timm's parameter counts, and timm's files through --load."""
import importlib.util
import pickle
import re
import sys

import numpy as np
import onnxruntime
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from safetensors.numpy import save_file
from tensorpack.tfutils.tower import TowerContext

import main
from conftest import run_main_py
from deploy import export
from networks import build_model, flops
from timm_fixtures import load_fixture, seeded_images, seeded_state_dict
from weights.checkpoint import CheckpointError
from weights.state_dict import StateDictInit, read_state_dict, session_init

tfv1 = tf.compat.v1

# parameters of timm 1.0.31's ghostnet_050, _100, _130 (sum of p.numel(); ../shared/FAMILY_FACTS.md)
TIMM_PARAMS = {0.5: 2587292, 1.0: 5182508, 1.3: 7358820}
PUBLISHED_MULTIPLY_ADDS = 142e6     # GhostNet 1.0x, PyTorch release
SMALL_IMAGE_SIZE = 32


def ghostnet_pytorch(width, image_size=224, num_classes=1000):
    return build_model(main.parse_args(['--fake', '--arch', 'ghostnet-pytorch', '--width_ratio', str(width),
                                        '--image_size', str(image_size)]), num_classes)


def graph_input(rgb_images):
    """uint8 RGB images as the graph takes them: BGR [0, 255] float."""
    return rgb_images[..., ::-1].astype(np.float32)


def assert_matches_timm(logits, timm_logits, what):
    """Within 1e-4 of timm's largest logit, with timm's top-1; returns max |diff| / max |logit|."""
    scale = np.abs(timm_logits).max()
    np.testing.assert_allclose(logits, timm_logits, rtol=0, atol=1e-4 * scale, err_msg=what)
    np.testing.assert_array_equal(logits.argmax(1), timm_logits.argmax(1), err_msg=what)
    return np.abs(logits - timm_logits).max() / scale


@pytest.fixture(scope='module')
def timm_reference():
    """{width: timm's keys, parameters and logits} from the fixture."""
    return load_fixture()


@pytest.fixture(scope='module')
def timm_files(timm_reference, tmp_path_factory):
    """{width: a .safetensors file of the seeded weights in timm's keys, BN counters included}."""
    directory = tmp_path_factory.mktemp('timm')
    files = {}
    for width, entry in timm_reference.items():
        files[width] = str(directory / 'ghostnet_{}.safetensors'.format(width))
        save_file(seeded_state_dict(entry['keys']), files[width])
    return files


def graph_run(model, weights_path, images):
    """(logits, parameters, multiply-adds) of `model`'s training graph in inference mode (batch norm unfolded;
    networks/flops.py's graph, which takes one image) with `weights_path` loaded through --load's boundary."""
    graph = flops.inference_graph(model)
    with graph.as_default(), tfv1.Session() as sess:
        session_init(weights_path, model).init(sess)
        logits = np.concatenate([sess.run(model.end_points['Logits'], {'input:0': [image]}) for image in images])
    return logits, flops.total_params(graph), flops.total_multiply_adds(graph)


@pytest.mark.parametrize('width', sorted(TIMM_PARAMS))
def test_graph_matches_timm_and_counts_its_parameters(width, timm_reference, timm_files):
    timm_logits = timm_reference[width]['logits']
    logits, params, multiply_adds = graph_run(ghostnet_pytorch(width), timm_files[width],
                                              graph_input(seeded_images()))
    ratio = assert_matches_timm(logits, timm_logits, 'graph')
    print('width {}: max |diff| / max |logit| {:.2e}; {:,} parameters, {:,} multiply-adds'.format(
        width, ratio, params, multiply_adds))
    assert params == timm_reference[width]['params'] == TIMM_PARAMS[width]
    if width == 1.0:
        assert multiply_adds == pytest.approx(PUBLISHED_MULTIPLY_ADDS, rel=0.03)
    # the images give other logits, far beyond the tolerance: the input counts
    assert np.abs(timm_logits[0] - timm_logits[1]).max() > 100 * 1e-4 * np.abs(timm_logits).max()


def test_exported_formats_match_timm(timm_reference, timm_files, tmp_path):
    model, images = ghostnet_pytorch(1.0), seeded_images()
    timm_logits = timm_reference[1.0]['logits']
    graph_def = export.frozen_serving_graph(model, timm_files[1.0])
    saved_model = export.save_saved_model(graph_def, model.image_shape, str(tmp_path / 'saved_model'))
    tflite = export.export_tflite(saved_model, str(tmp_path / 'model.tflite'))
    onnx = export.save_onnx(graph_def, str(tmp_path / 'model.onnx'))
    served = {
        'SavedModel': tf.saved_model.load(saved_model).signatures['serving_default'](
            images=tf.constant(images))['logits'].numpy(),
        'LiteRT': Interpreter(tflite).get_signature_runner()(images=images)['logits'],
        'ONNX': onnxruntime.InferenceSession(onnx).run(['logits'], {'images': images})[0]}
    for name, logits in served.items():
        print('{}: max |diff| / max |logit| {:.2e}'.format(name, assert_matches_timm(logits, timm_logits, name)))


@pytest.fixture(scope='module')
def small_graph():
    """(graph, model) of ghostnet-pytorch 1.0x built at 32x32 (the weights' shapes are those at 224x224)."""
    model = ghostnet_pytorch(1.0, SMALL_IMAGE_SIZE)
    with tf.Graph().as_default() as graph, TowerContext('', is_training=False):
        model.get_logits(model.image_preprocess(tfv1.placeholder(tf.float32, [None, 32, 32, 3])))
    return graph, model


def edited(timm_reference, tmp_path, drop=(), add=(), reshape=(), width=1.0):
    """A .safetensors file of the seeded weights less `drop`, plus `add` (keys), with `reshape` keys' values
    given another shape."""
    weights = seeded_state_dict(timm_reference[width]['keys'])
    weights = {key: value for key, value in weights.items() if key not in drop}
    weights.update({key: np.zeros(3, np.float32) for key in add})
    weights.update({key: np.zeros(weights[key].shape[::-1], np.float32) for key in reshape})
    path = str(tmp_path / 'edited.safetensors')
    save_file(weights, path)
    return path


@pytest.mark.parametrize('edit, message', [
    (dict(drop=['blocks.3.0.se.conv_reduce.bias']),
     r'key blocks\.3\.0\.se\.conv_reduce\.bias is missing \(expected shape \[20\], for '
     r'GhostNetPyTorch/Conv2d_4_se/fc1/b\)'),
    (dict(add=['blocks.3.0.se.fc.weight']), r'unexpected key blocks\.3\.0\.se\.fc\.weight \(shape \[3\]\)'),
    (dict(reshape=['conv_head.weight']),
     r'conv_head\.weight has shape \[1, 1, 960, 1280\], expected \[1280, 960, 1, 1\] \(for '
     r'GhostNetPyTorch/Conv2d_18/W\)'),
    (dict(width=0.5), r'conv_stem\.weight has shape \[8, 3, 3, 3\], expected \[16, 3, 3, 3\] \(for '
                      r'GhostNetPyTorch/Conv2d_0/W\)'),
])
def test_a_file_that_does_not_fit_is_one_line_naming_the_key(small_graph, timm_reference, tmp_path, edit,
                                                             message):
    graph, model = small_graph
    path = edited(timm_reference, tmp_path, **edit)
    with graph.as_default(), pytest.raises(CheckpointError) as error:
        session_init(path, model)._setup_graph()
    assert re.match('^{} does not fit the model: {}'.format(re.escape(path), message), str(error.value)), \
        str(error.value)
    assert '\n' not in str(error.value)


def test_fine_tuning_keeps_the_classifier_of_another_class_count(timm_reference, timm_files):
    model = ghostnet_pytorch(1.0, SMALL_IMAGE_SIZE, num_classes=7)
    with tf.Graph().as_default(), TowerContext('', is_training=False):
        model.get_logits(model.image_preprocess(tfv1.placeholder(tf.float32, [None, 32, 32, 3])))
        weights = StateDictInit(timm_files[1.0], model.scope, model.torch_layers(), model.classifier_scope)
        weights._setup_graph()
        assert sorted(weights._skipped) == ['classifier.bias', 'classifier.weight']
        with tfv1.Session() as sess:
            sess.run(tfv1.global_variables_initializer())
            weights._run_init(sess)
            stem, = sess.run([v for v in tfv1.global_variables() if v.op.name == 'GhostNetPyTorch/Conv2d_0/W'])
    np.testing.assert_array_equal(stem, seeded_state_dict(timm_reference[1.0]['keys'])['conv_stem.weight']
                                  .transpose(2, 3, 1, 0))


class WritesAFile:
    """Unpickling it opens (creates) a file: what a crafted pickle could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, 'w')


def run_main_error(*flags):
    """main.main's `error: ` line for flags that must fail."""
    with pytest.raises(SystemExit) as exit_info:
        main.main(list(flags))
    message = str(exit_info.value.code)
    assert message.startswith('error: ') and '\n' not in message, message
    return message


def test_an_unreadable_safetensors_file_is_one_error_line(tmp_path):
    path = tmp_path / 'bad.safetensors'
    path.write_bytes(b'not a state dict')
    message = run_main_error('--arch', 'ghostnet-pytorch', '--export', str(tmp_path), '--load', str(path))
    assert message.startswith('error: {}: not a readable safetensors file: '.format(path))


def test_a_crafted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'model.pth'
    path.write_bytes(pickle.dumps({'state_dict': WritesAFile(str(marker))}))
    message = run_main_error('--arch', 'ghostnet-pytorch', '--export', str(tmp_path), '--load', str(path))
    if importlib.util.find_spec('torch'):
        assert 'torch.load(weights_only=True) refused it' in message
    else:
        assert message == ('error: {}: reading a PyTorch pickle needs torch, which is not installed; load the same '
                           'weights as .safetensors (timm\'s model.safetensors) instead'.format(path))
    assert not marker.exists()


class TorchStandIn:
    """What read_pickled uses of torch: `load` (recording its arguments) and `Tensor`."""

    class Tensor:
        def __init__(self, value):
            self.value = value

        def numpy(self):
            return self.value

    def __init__(self, stored=None, error=None):
        self.stored, self.error, self.calls = stored, error, []

    def load(self, path, **kwargs):
        self.calls.append(kwargs)
        if self.error:
            raise self.error
        return self.stored


def test_pth_files_are_read_by_torch_weights_only(monkeypatch, tmp_path):
    path = str(tmp_path / 'model.pth.tar')
    open(path, 'wb').close()
    torch = TorchStandIn({'state_dict': {'conv_stem.weight': TorchStandIn.Tensor(np.ones(2)),
                                         'bn1.num_batches_tracked': TorchStandIn.Tensor(np.zeros(())),
                                         'total_ops': TorchStandIn.Tensor(np.zeros(()))}, 'epoch': 3})
    monkeypatch.setitem(sys.modules, 'torch', torch)
    assert list(read_state_dict(path)) == ['conv_stem.weight']
    assert torch.calls == [dict(map_location='cpu', weights_only=True)]
    monkeypatch.setitem(sys.modules, 'torch', TorchStandIn(error=pickle.UnpicklingError(
        'Weights only load failed. ...\nPlease file an issue ...')))
    with pytest.raises(CheckpointError) as error:
        read_state_dict(path)
    assert str(error.value) == '{}: torch.load(weights_only=True) refused it: Weights only load failed. ' \
                               '...'.format(path)


def test_a_state_dict_for_the_tf_release_is_one_error_line(timm_files, tmp_path):
    message = run_main_error('--export', str(tmp_path), '--load', timm_files[1.0])
    assert message == 'error: {}: a PyTorch state dict, which GhostNet can not load (--arch ghostnet-pytorch ' \
                      'can)'.format(timm_files[1.0])


def test_timm_file_evaluates_end_to_end(sample_dirs, timm_reference, tmp_path):
    """main.py --eval with a file whose classifier favours one of the sample's classes, then the other three:
    top-1 is right for that class's images alone, top-5 for all."""
    data_dir = sample_dirs['flat']
    with open(data_dir + '/caffe_ilsvrc12/val.txt') as f:
        labels = sorted({int(line.split()[1]) for line in f if line.strip()})
    weights = seeded_state_dict(timm_reference[1.0]['keys'])
    weights['classifier.bias'][labels] += [1000] + [500] * (len(labels) - 1)
    path = str(tmp_path / 'model.safetensors')
    save_file(weights, path)
    result = run_main_py('--eval', '--arch', 'ghostnet-pytorch', '--load', path, '--data_dir', data_dir,
                         '--image_size', '48', '--workers', '1', verbose=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ['Top1 Error: {}'.format(1 - 1 / len(labels)), 'Top5 Error: 0.0']
