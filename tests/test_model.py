"""GhostNet against the released checkpoint's manifest, the paper's sizes and a save/restore round trip."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorpack.tfutils.tower import TowerContext

from conftest import REFERENCE_DIR, needs_reference
from networks import flops
from ghostnet import GhostNet, parse_code, scaled_channels

tfv1 = tf.compat.v1
HERE = os.path.dirname(os.path.abspath(__file__))
MANIFEST = os.path.join(HERE, 'data', 'released_variables.json')
RELEASED_INDEX = os.path.join(REFERENCE_DIR, 'ghostnet_checkpoint')


def build(model, batch=None, size=224, is_training=False):
    """The model's graph with `input`/`label` placeholders; returns (graph, input, logits)."""
    graph = tf.Graph()
    with graph.as_default():
        image = tfv1.placeholder(tf.float32, [batch, size, size, 3], 'input')
        label = tfv1.placeholder(tf.int32, [batch], 'label')
        with TowerContext('', is_training=is_training):
            model.build_graph(image, label)
        logits = graph.get_tensor_by_name('logits:0')
    return graph, image, logits


def variable_shapes(graph):
    return {v.op.name: v.shape.as_list() for v in graph.get_collection(tfv1.GraphKeys.GLOBAL_VARIABLES)}


def released_manifest():
    with open(MANIFEST) as f:
        return json.load(f)


@pytest.fixture(scope='module')
def default_graph():
    return build(GhostNet())


@needs_reference
def test_committed_manifest_is_the_released_index():
    index = tf.train.load_checkpoint(RELEASED_INDEX).get_variable_to_shape_map()
    assert released_manifest() == {name: list(shape) for name, shape in index.items()}


def test_variables_are_exactly_the_released_ones(default_graph):
    graph, _, _ = default_graph
    got, want = variable_shapes(graph), released_manifest()
    assert sorted(set(want) - set(got)) == []
    assert sorted(set(got) - set(want)) == []
    assert {name: shape for name, shape in got.items() if want[name] != shape} == {}
    assert len(got) == 435


def test_trainable_parameters(default_graph):
    graph, _, _ = default_graph
    manifest_trainable = sum(int(np.prod(shape)) for name, shape in released_manifest().items()
                             if not name.endswith('/EMA'))
    assert flops.total_params(graph) == manifest_trainable == 5183016


def test_training_adds_only_optimizer_state():
    model = GhostNet()
    graph, _, _ = build(model, is_training=True)
    with graph.as_default():
        tfv1.train.get_or_create_global_step()
        cost = graph.get_tensor_by_name('cost:0')
        model.get_optimizer().minimize(cost)
    extra = set(variable_shapes(graph)) - set(released_manifest())
    assert all(name in ('learning_rate', 'global_step') or name.endswith('/Momentum') for name in extra)


def test_released_format_checkpoint_restores_into_fresh_graph(tmp_path):
    images = np.random.RandomState(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    prefix = str(tmp_path / 'ghostnet_checkpoint')
    graph, image, logits = build(GhostNet())
    with graph.as_default(), tfv1.Session() as sess:
        sess.run(tfv1.global_variables_initializer())
        randomize_batch_norm(sess, graph)
        written = sess.run(logits, {image: images})
        tfv1.train.Saver().save(sess, prefix, write_meta_graph=False)
    saved = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    assert {k: list(v) for k, v in saved.items()} == released_manifest()

    graph, image, logits = build(GhostNet())
    with graph.as_default(), tfv1.Session() as sess:
        tfv1.train.Saver().restore(sess, prefix)
        uninitialized = sess.run(tfv1.report_uninitialized_variables())
        restored = sess.run(logits, {image: images})
    assert len(uninitialized) == 0
    np.testing.assert_array_equal(restored, written)


def randomize_batch_norm(sess, graph):
    """Non-trivial batch-norm statistics, so that inference really uses them."""
    rng = np.random.RandomState(1)
    for var in graph.get_collection(tfv1.GraphKeys.GLOBAL_VARIABLES):
        if var.op.name.endswith('mean/EMA'):
            var.load(rng.normal(0, 0.1, var.shape.as_list()), sess)
        elif var.op.name.endswith('variance/EMA'):
            var.load(rng.uniform(0.5, 1.5, var.shape.as_list()), sess)


@pytest.mark.parametrize('width, params, multiply_adds', [(0.5, 2.6e6, 42e6), (1.3, 7.3e6, 226e6)])
def test_paper_widths(width, params, multiply_adds):
    graph, _, _ = build(GhostNet(width=width), batch=1)
    assert flops.total_params(graph) == pytest.approx(params, rel=0.02)
    assert flops.total_multiply_adds(graph) == pytest.approx(multiply_adds, rel=0.02)


def test_multiply_adds_at_width_one():
    graph, _, _ = build(GhostNet(), batch=1)
    table = {row.name: row for row in flops.layer_table(graph)}
    # by hand: a 3x3 stride-2 conv from 3 to 16 channels onto 112x112
    assert table['MobileNetV2/Conv2d_0'].multiply_adds == 112 * 112 * 16 * 3 * 3 * 3
    # the cheap op of Conv2d_1's up module: 3x3 depthwise on 8 channels at 112x112
    assert table['MobileNetV2/Conv2d_1_up_pointwise/dw1'].multiply_adds == 112 * 112 * 8 * 9
    assert table['MobileNetV2/Logits/Conv2d_1c_1x1'].multiply_adds == 1280 * 1000
    assert flops.total_multiply_adds(graph) == pytest.approx(141e6, rel=0.01)


def test_width_rounding():
    assert [scaled_channels(c, 1.0) for c in (16, 24, 184, 960)] == [16, 24, 184, 960]
    assert scaled_channels(16, 0.5) == 8 and scaled_channels(16, 0.1) == 8
    assert scaled_channels(2.3 * 80, 0.5) == 92     # 2.3 * 80 is 183.99999999999997
    assert scaled_channels(40, 1.3) == 52           # round(13.0) * 4
    assert scaled_channels(24, 1.3) == 32           # round(31 / 4) = round(7.75) = 8


def test_codes_and_se_switch_change_the_variables():
    dw_code = [5] + [3] * 15
    ratio_code = [2] * 15 + [1]
    graph, _, _ = build(GhostNet(se=False, dw_code=dw_code, ratio_code=ratio_code), batch=1, size=64)
    shapes = variable_shapes(graph)
    assert not any('_se/' in name for name in shapes)
    assert shapes['MobileNetV2/Conv2d_1_up_pointwise/dw1/DW'] == [5, 5, 8, 1]
    assert shapes['MobileNetV2/Conv2d_16_down_pointwise/conv1/W'] == [1, 1, 960, 160]
    assert not any(name.startswith('MobileNetV2/Conv2d_16_down_pointwise/dw1') for name in shapes)


def test_parse_code():
    assert parse_code(','.join(['3'] * 16), '--dw_code_str') == [3] * 16
    with pytest.raises(ValueError, match='--ratio_code_str'):
        parse_code('2,2', '--ratio_code_str')
    with pytest.raises(ValueError, match='--dw_code_str'):
        parse_code('3,x' + ',3' * 14, '--dw_code_str')


def test_end_points_for_detection(default_graph):
    model = GhostNet()
    build(model, batch=1)
    strides = {name: 224 // model.end_points[name].shape.as_list()[1]
               for name in ('Conv2d_3', 'Conv2d_5', 'Conv2d_11', 'Conv2d_16')}
    assert strides == {'Conv2d_3': 4, 'Conv2d_5': 8, 'Conv2d_11': 16, 'Conv2d_16': 32}
    assert model.end_points['Conv2d_16'].shape.as_list()[-1] == 160


@pytest.mark.gpu
def test_nchw_model_equals_nhwc(tmp_path):
    images = np.random.RandomState(2).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    prefix = str(tmp_path / 'nhwc')
    graph, image, logits = build(GhostNet(num_classes=10, image_shape=64), size=64)
    with graph.as_default(), tfv1.Session() as sess:
        sess.run(tfv1.global_variables_initializer())
        randomize_batch_norm(sess, graph)
        nhwc = sess.run(logits, {image: images})
        tfv1.train.Saver().save(sess, prefix, write_meta_graph=False)
    graph, image, logits = build(GhostNet(num_classes=10, image_shape=64, data_format='NCHW'), size=64)
    with graph.as_default(), tfv1.Session() as sess:
        tfv1.train.Saver().restore(sess, prefix)
        try:
            nchw = sess.run(logits, {image: images})
        except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError) as e:
            pytest.skip('TensorFlow here does not run this model in NCHW: {}'.format(
                e.message.splitlines()[0]))
    np.testing.assert_allclose(nchw, nhwc, rtol=1e-4, atol=1e-4)
