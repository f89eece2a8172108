"""The figure scripts in fig/: ghost/intrinsic channel pairs against a NumPy depthwise conv, the latency figure."""
import json
import os
import sys

import numpy as np
import pytest

pytest.importorskip('matplotlib')

import tensorflow as tf  # noqa: E402
from tensorpack.tfutils.tower import TowerContext  # noqa: E402

from benchmarks import speed  # noqa: E402
from ghostnet import GhostNet  # noqa: E402
from weights.checkpoint import CheckedInit, checkpoint_variables  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'fig'))
import ghost_feature_maps  # noqa: E402
import latency_vs_madds  # noqa: E402

tfv1 = tf.compat.v1

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
RATIO = 3          # two ghost maps per intrinsic map, so ghost j comes from intrinsic j // 2, not j
LAYER = 'Conv2d_2_up_pointwise'
MODEL_FLAGS = ['--width_ratio', '0.25', '--ratio_code_str', ','.join([str(RATIO)] * 16), '--image_size', '32']


def small_model():
    """GhostNet 0.25x at 32x32 with ratio 3 everywhere, 10 classes."""
    return GhostNet(10, 0.25, ratio_code=[RATIO] * 16, image_shape=32)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A tensorpack .npz of `small_model` with random kernels and random batch-norm statistics."""
    path = str(tmp_path_factory.mktemp('figures') / 'model.npz')
    rng = np.random.RandomState(0)
    with tf.Graph().as_default():
        model = small_model()
        inputs = [tfv1.placeholder(spec.dtype, spec.shape, spec.name) for spec in model.get_input_signature()]
        with TowerContext('', is_training=False):
            model.build_graph(*inputs)
        with tfv1.Session() as sess:
            sess.run(tfv1.global_variables_initializer())
            values = sess.run({v.name: v for v in checkpoint_variables()})
    for name, value in values.items():
        if '/bn/' in name:
            low = 0.5 if name.endswith(('variance/EMA:0', 'gamma:0')) else -0.5
            values[name] = rng.uniform(low, 1.5, value.shape).astype(np.float32)
    np.savez(path, **values)
    return path


def depthwise_same(x, kernel):
    """A single-channel [H, W] map convolved (cross-correlation, SAME padding) with an odd [k, k] kernel."""
    k = kernel.shape[0]
    padded = np.pad(x, k // 2)
    return sum(padded[dy:dy + x.shape[0], dx:dx + x.shape[1]] * kernel[dy, dx]
               for dy in range(k) for dx in range(k))


def test_each_ghost_map_is_the_cheap_op_on_its_paired_intrinsic_map(checkpoint):
    image = ghost_feature_maps.load_image(None, 32)
    intrinsic, ghost, kernel, relu = ghost_feature_maps.feature_maps(small_model(), LAYER, image,
                                                                     CheckedInit(checkpoint))
    assert relu and kernel.shape == (3, 3, intrinsic.shape[-1], RATIO - 1)
    pairs = ghost_feature_maps.channel_pairs(ghost.shape[-1], kernel.shape[-1])
    assert [i for i, _ in pairs] == [j // (RATIO - 1) for j in range(ghost.shape[-1])]
    with np.load(checkpoint) as values:
        bn = {name: values['MobileNetV2/{}/dw1/bn/{}:0'.format(LAYER, name)]
              for name in ('gamma', 'beta', 'mean/EMA', 'variance/EMA')}
    for i, j in pairs:
        conv = depthwise_same(intrinsic[..., i], kernel[:, :, i, j % (RATIO - 1)])
        scale = bn['gamma'][j] / np.sqrt(bn['variance/EMA'][j] + 1e-5)
        expected = np.maximum((conv - bn['mean/EMA'][j]) * scale + bn['beta'][j], 0)
        np.testing.assert_allclose(ghost[..., j], expected, rtol=1e-4, atol=1e-4)


def test_chosen_pairs_put_the_most_varied_intrinsic_maps_first():
    intrinsic = np.zeros((4, 4, 3))
    intrinsic[0, 0, 1], intrinsic[0, 0, 2] = 1.0, 5.0
    pairs = ghost_feature_maps.channel_pairs(6, 2)
    assert ghost_feature_maps.chosen_pairs(intrinsic, pairs, 3) == [(2, 4), (2, 5), (1, 2)]


def test_ghost_feature_maps_script_writes_a_png(checkpoint, tmp_path):
    out = tmp_path / 'maps.png'
    ghost_feature_maps.main(['--load', checkpoint, '--pairs', '3', '--out', str(out)] + MODEL_FLAGS)
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def test_ghost_feature_maps_names_the_ghost_modules_for_a_bad_layer(checkpoint, tmp_path):
    with pytest.raises(SystemExit) as e:
        ghost_feature_maps.main(['--load', checkpoint, '--layer', 'Conv2d_0', '--out', str(tmp_path / 'x.png')]
                                + MODEL_FLAGS)
    assert str(e.value.code).startswith('error: --layer Conv2d_0: not a Ghost module')
    assert 'Conv2d_1_up_pointwise' in str(e.value.code)


def test_without_the_demo_model_it_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        ghost_feature_maps.main([])
    assert e.value.code == 1
    assert 'python main.py --demo' in capsys.readouterr().err


def test_multiply_adds_match_the_papers():
    assert round(latency_vs_madds.multiply_adds('ghostnet-0.5', 224) / 1e6, 1) == 42.3
    assert abs(latency_vs_madds.multiply_adds('mobilenetv3-small', 224) / 1e6 - 56) < 1


def test_latency_figure_from_a_small_report(tmp_path, monkeypatch):
    latency = {'graph': {'latency_ms': 20.0, 'best_latency_ms': 15.0},
               'tflite': {'latency_ms': 5.0, 'best_latency_ms': 4.0}}
    report = {'machine': {'cpu': 'test CPU', 'cores': 2, 'tensorflow': tf.__version__},
              'settings': {'image_size': 224, 'rounds': 2, 'iters': 3},
              'results': {'ghostnet-0.5': latency, 'mobilenetv3-small': latency, 'unknown-model': latency}}
    bench = tmp_path / 'bench.json'
    bench.write_text(json.dumps(report))
    monkeypatch.setattr(latency_vs_madds, 'multiply_adds', lambda name, size: {
        'ghostnet-0.5': 42e6, 'mobilenetv3-small': 56e6}[name])
    out = tmp_path / 'latency.png'
    latency_vs_madds.main(['--bench', str(bench), '--out', str(out)])
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def test_latency_figure_needs_a_readable_report(tmp_path):
    with pytest.raises(SystemExit) as e:
        latency_vs_madds.main(['--bench', str(tmp_path / 'missing.json'), '--out', str(tmp_path / 'x.png')])
    assert str(e.value.code).startswith('error: ')


def test_latency_figure_has_a_panel_per_bench_path():
    assert list(latency_vs_madds.PANELS) == list(speed.INFERENCE_PATHS)
