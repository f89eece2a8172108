"""The Ghost family (--arch ghostnet-pytorch, ghostnetv2, ghostnetv3) against timm 1.0.31, without torch: the
logits timm computed for seeded weights and images (tests/data/timm_ghostnet.json, written by
tests/timm_fixtures.py) from each network's graph and exported formats, timm's parameter counts, and timm's
files through --load."""
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
from tensorpack.tfutils.argscope import argscope
from tensorpack.tfutils.tower import TowerContext

import main
from conftest import main_error, run_main_py
from deploy import export, litert_schedule
from myconv2d import ConvBN, DepthConv
from networks import build_model, flops
from runtime.session import without_graph_optimization
from timm_fixtures import TIMM_MODELS, load_fixture, seeded_images, seeded_state_dict
from weights.checkpoint import CheckpointError
from weights.state_dict import StateDictInit, read_state_dict, session_init

tfv1 = tf.compat.v1

# parameters of timm 1.0.31's models (sum of p.numel(), GhostNetV3's after reparameterize_model;
# ../shared/FAMILY_FACTS.md), where it states them
TIMM_PARAMS = {('ghostnet-pytorch', 0.5): 2587292, ('ghostnet-pytorch', 1.0): 5182508,
               ('ghostnet-pytorch', 1.3): 7358820, ('ghostnetv2', 1.0): 6156908, ('ghostnetv2', 1.3): 8960404,
               ('ghostnetv2', 1.6): 12392698, ('ghostnetv3', 1.0): 6147588, ('ghostnetv3', 1.3): 8948296}
# published multiply-adds: GhostNet 1.0x (PyTorch release), GhostNetV2 1.0x, GhostNetV3 1.3x
PUBLISHED_MULTIPLY_ADDS = {('ghostnet-pytorch', 1.0): 142e6, ('ghostnetv2', 1.0): 167e6, ('ghostnetv3', 1.3): 269e6}
GHOSTNET_100 = ('ghostnet-pytorch', 1.0)
SMALL_IMAGE_SIZE = 32
SMALL_FAMILY_SIZE = 48   # GhostNetV2's DFC attention needs 33 or more


def family_model(arch, width, image_size=224, num_classes=1000):
    return build_model(main.parse_args(['--fake', '--arch', arch, '--width_ratio', str(width),
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
    """{(arch, width): timm's keys, parameters and logits} from the fixture."""
    return load_fixture()


@pytest.fixture(scope='module')
def timm_files(timm_reference, tmp_path_factory):
    """{(arch, width): a .safetensors file of the seeded weights in timm's keys, BN counters included}."""
    directory = tmp_path_factory.mktemp('timm')
    files = {}
    for arch_width, entry in timm_reference.items():
        files[arch_width] = str(directory / '{}.safetensors'.format(TIMM_MODELS[arch_width]))
        save_file(seeded_state_dict(entry['keys']), files[arch_width])
    return files


def training_graph_logits(model, weights_path, images):
    """(`model`'s logits, graph) from its training graph in inference mode: batch norm unfolded and GhostNetV3's
    branches apart (networks/flops.py's graph, which takes one image), `weights_path` loaded through --load."""
    with argscope([ConvBN, DepthConv], reparameterize=False):
        graph = flops.inference_graph(model)
    with graph.as_default(), tfv1.Session(config=without_graph_optimization()) as sess:
        session_init(weights_path, model).init(sess)
        logits = [sess.run(model.end_points['Logits'], {'input:0': [image]}) for image in images]
    return np.concatenate(logits), graph


def counting_graph(model, training_graph):
    """networks/flops.py's graph of `model`: the training graph in inference mode unless it has branches that
    inference fuses (GhostNetV3's)."""
    branched = any('/branch' in v.op.name for v in training_graph.get_collection(tfv1.GraphKeys.GLOBAL_VARIABLES))
    return flops.inference_graph(model) if branched else training_graph


@pytest.mark.parametrize('arch_width', sorted(TIMM_MODELS), ids='{0[0]}-{0[1]}'.format)
def test_graph_matches_timm_and_counts_its_parameters(arch_width, timm_reference, timm_files):
    timm_logits = timm_reference[arch_width]['logits']
    model = family_model(*arch_width)
    logits, training_graph = training_graph_logits(model, timm_files[arch_width], graph_input(seeded_images()))
    ratio = assert_matches_timm(logits, timm_logits, 'graph')
    graph = counting_graph(model, training_graph)
    params, multiply_adds = flops.total_params(graph), flops.total_multiply_adds(graph)
    print('{}: max |diff| / max |logit| {:.2e}; {:,} parameters, {:,} multiply-adds'.format(
        TIMM_MODELS[arch_width], ratio, params, multiply_adds))
    assert params == timm_reference[arch_width]['params'] == TIMM_PARAMS.get(arch_width, params)
    if arch_width in PUBLISHED_MULTIPLY_ADDS:
        assert multiply_adds == pytest.approx(PUBLISHED_MULTIPLY_ADDS[arch_width], rel=0.03)
    # the images give other logits, far beyond the tolerance: the input counts
    assert np.abs(timm_logits[0] - timm_logits[1]).max() > 100 * 1e-4 * np.abs(timm_logits).max()


@pytest.mark.parametrize('arch', ['ghostnet-pytorch', 'ghostnetv2', 'ghostnetv3'])
def test_exported_formats_match_timm(arch, timm_reference, timm_files, tmp_path):
    model, images = family_model(arch, 1.0), seeded_images()
    timm_logits = timm_reference[arch, 1.0]['logits']
    graph_def = export.frozen_serving_graph(model, timm_files[arch, 1.0])
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
    interpreter = Interpreter(tflite, num_threads=2)
    interpreter.allocate_tensors()
    op_names = [op['op_name'] for op in interpreter._get_ops_details()]
    assert op_names.count('DELEGATE') == 1, op_names    # XNNPACK runs the whole network (DFC attention too)
    branch_convs = [node.name for node in graph_def.node
                    if node.op in ('Conv2D', 'DepthwiseConv2dNative') and '/branch' in node.name]
    assert not branch_convs, branch_convs   # GhostNetV3's branches fused: one conv per layer
    up_outputs = [node.name for node in graph_def.node if node.op == 'ConcatV2' and re.search(
        r'_up_pointwise/(concat|dfc/gated)$', node.name)]
    assert not up_outputs, up_outputs   # the up modules' outputs, gated or not, are taken by parts
    assert not gates_listed_after_their_modules_convs(tflite)


def gates_listed_after_their_modules_convs(path):
    """[(sigmoid, conv)] where the LiteRT file lists a DFC gate's sigmoid after a conv that reads the same
    input as the gate's pooling (the Ghost module's primary conv): export lists gates first."""
    model = litert_schedule.read_model(path)
    ops = model.subgraphs[0].operators
    operators = [(index, kind, op) for index, (kind, op) in enumerate(zip(litert_schedule.operator_kinds(model, ops),
                                                                          ops))]
    late = []
    for pool_index, kind, pool in operators:
        if kind != 'AVERAGE_POOL_2D':
            continue
        sigmoid = first_consumer_of_kind(operators, pool_index, 'LOGISTIC')
        convs = [index for index, kind, op in operators if kind == 'CONV_2D' and pool.inputs[0] in op.inputs]
        late += [(sigmoid, conv) for conv in convs if conv < sigmoid]
    return late


def first_consumer_of_kind(operators, start, kind):
    """The index of the first operator of `kind` downstream of operator `start`, following first consumers."""
    index = start
    while operators[index][1] != kind:
        output = operators[index][2].outputs[0]
        index = next(i for i, _, op in operators if output in op.inputs)
    return index


@pytest.fixture(scope='module')
def small_graph():
    """(graph, model) of ghostnet-pytorch 1.0x built at 32x32 (the weights' shapes are those at 224x224)."""
    model = family_model('ghostnet-pytorch', 1.0, SMALL_IMAGE_SIZE)
    with tf.Graph().as_default() as graph, TowerContext('', is_training=False):
        model.get_logits(model.image_preprocess(tfv1.placeholder(tf.float32, [None, 32, 32, 3])))
    return graph, model


def edited(timm_reference, tmp_path, drop=(), add=(), reshape=(), arch='ghostnet-pytorch', width=1.0):
    """A .safetensors file of the seeded weights less `drop`, plus `add` (keys), with `reshape` keys' values
    given another shape."""
    weights = seeded_state_dict(timm_reference[arch, width]['keys'])
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
    model = family_model('ghostnet-pytorch', 1.0, SMALL_IMAGE_SIZE, num_classes=7)
    with tf.Graph().as_default(), TowerContext('', is_training=False):
        model.get_logits(model.image_preprocess(tfv1.placeholder(tf.float32, [None, 32, 32, 3])))
        weights = StateDictInit(timm_files[GHOSTNET_100], model.scope, model.torch_layers(), model.classifier_scope)
        weights._setup_graph()
        assert sorted(weights._skipped) == ['classifier.bias', 'classifier.weight']
        with tfv1.Session() as sess:
            sess.run(tfv1.global_variables_initializer())
            weights._run_init(sess)
            stem, = sess.run([v for v in tfv1.global_variables() if v.op.name == 'GhostNetPyTorch/Conv2d_0/W'])
    np.testing.assert_array_equal(stem, seeded_state_dict(timm_reference[GHOSTNET_100]['keys'])['conv_stem.weight']
                                  .transpose(2, 3, 1, 0))


class WritesAFile:
    """Unpickling it opens (creates) a file: what a crafted pickle could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, 'w')


def test_an_unreadable_safetensors_file_is_one_error_line(capfd, tmp_path):
    path = tmp_path / 'bad.safetensors'
    path.write_bytes(b'not a state dict')
    message = main_error(capfd, '--arch', 'ghostnet-pytorch', '--export', str(tmp_path), '--load', str(path))
    assert message.startswith('error: {}: not a readable safetensors file: '.format(path))


def test_a_crafted_pickle_is_refused_and_never_runs(capfd, tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'model.pth'
    path.write_bytes(pickle.dumps({'state_dict': WritesAFile(str(marker))}))
    message = main_error(capfd, '--arch', 'ghostnet-pytorch', '--export', str(tmp_path), '--load', str(path))
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


def test_a_state_dict_for_the_tf_release_is_one_error_line(capfd, timm_files, tmp_path):
    message = main_error(capfd, '--export', str(tmp_path), '--load', timm_files[GHOSTNET_100])
    assert message == 'error: {}: a PyTorch state dict, which GhostNet can not load (--arch ghostnet-pytorch, ' \
                      'ghostnetv2 and ghostnetv3 can)'.format(timm_files[GHOSTNET_100])


def test_timm_file_evaluates_end_to_end(sample_dirs, timm_reference, tmp_path):
    """main.py --eval with a file whose classifier favours one of the sample's classes, then the other three:
    top-1 is right for that class's images alone, top-5 for all."""
    data_dir = sample_dirs['flat']
    with open(data_dir + '/caffe_ilsvrc12/val.txt') as f:
        labels = sorted({int(line.split()[1]) for line in f if line.strip()})
    weights = seeded_state_dict(timm_reference[GHOSTNET_100]['keys'])
    weights['classifier.bias'][labels] += [1000] + [500] * (len(labels) - 1)
    path = str(tmp_path / 'model.safetensors')
    save_file(weights, path)
    result = run_main_py('--eval', '--arch', 'ghostnet-pytorch', '--load', path, '--data_dir', data_dir,
                         '--image_size', '48', '--workers', '1', verbose=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ['Top1 Error: {}'.format(1 - 1 / len(labels)), 'Top5 Error: 0.0']


def small_family_graph(arch, width=1.0, reparameterize=True, num_classes=1000):
    """(graph, model) of `arch` built at SMALL_FAMILY_SIZE, in inference mode."""
    model = family_model(arch, width, SMALL_FAMILY_SIZE, num_classes)
    with tf.Graph().as_default() as graph, TowerContext('', is_training=False), \
            argscope([ConvBN, DepthConv], reparameterize=reparameterize):
        model.get_logits(model.image_preprocess(
            tfv1.placeholder(tf.float32, [None, SMALL_FAMILY_SIZE, SMALL_FAMILY_SIZE, 3], 'input')))
    return graph, model


@pytest.fixture(scope='module')
def small_v3_graph():
    return small_family_graph('ghostnetv3')


def test_a_v2_file_for_v3_names_the_first_branch_it_lacks(small_v3_graph, timm_files):
    graph, model = small_v3_graph
    path = timm_files['ghostnetv2', 1.0]
    with graph.as_default(), pytest.raises(CheckpointError) as error:
        session_init(path, model)._setup_graph()
    assert str(error.value) == ('{} does not fit the model: key blocks.0.0.ghost1.primary_rpr_conv.0.conv.weight is '
                                'missing (expected shape [8, 16, 1, 1], for GhostNetV3/Conv2d_1_up_pointwise/conv1/'
                                'branch0/W)'.format(path))


def test_the_authors_v3_keys_load_as_timms(small_v3_graph, timm_reference, tmp_path):
    """The authors' GhostNetV3 files call the branches' batch norms `bn` where timm has `bn1`."""
    weights = seeded_state_dict(timm_reference['ghostnetv3', 1.0]['keys'])
    authors = {key.replace('.bn1.', '.bn.') if '_rpr_' in key else key: value for key, value in weights.items()}
    assert len([key for key in authors if '.bn.' in key]) > 100
    path = str(tmp_path / 'ghostnetv3-1.0.safetensors')
    save_file(authors, path)
    graph, model = small_v3_graph
    name = 'GhostNetV3/Conv2d_4_depthwise/branch2/bn/variance/EMA'
    with graph.as_default(), tfv1.Session() as sess:
        session_init(path, model).init(sess)
        restored, = sess.run([v for v in tfv1.global_variables() if v.op.name == name])
    np.testing.assert_array_equal(restored, weights['blocks.3.0.dw_rpr_conv.2.bn1.running_var'])


def test_an_image_too_small_for_dfc_pooling_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main.parse_args(['--fake', '--arch', 'ghostnetv2', '--image_size', '32'])
    assert '--image_size is at least 33 for --arch ghostnetv2' in capsys.readouterr().err
    family_model('ghostnetv2', 1.0, 33)   # the stride-32 maps are 2x2
