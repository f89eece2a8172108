"""The plug-in networks: the paper's counts, the folded inference graph, checkpoints and export, --arch."""
import re

import numpy as np
import onnxruntime
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from tensorpack.tfutils.argscope import argscope
from tensorpack.tfutils.tower import TowerContext

from conftest import random_values
from deploy import export
from networks import flops
import main
from runtime.session import without_graph_optimization
from weights.checkpoint import CheckpointError, checkpoint_variables
from weights.resume import ResumeInit
from myconv2d import ConvBN, DepthConv, SELayer
from networks import ARCHITECTURES, build_model
from networks.resnet import ResNet50
from networks.resnet_cifar import ResNet56

tfv1 = tf.compat.v1

# The paper's params (M) and FLOPs (M, one multiply-add counted once) per configuration
# (../shared/PLUGIN_FACTS.md), and the tolerance each must be counted within.
PAPER = [
    ('vgg16', 2, 3, 15.0, 313, 0.02),
    ('ghost-vgg16', 2, 3, 7.7, 158, 0.02),
    ('ghost-vgg16', 2, 1, 7.6, 157, 0.02),
    ('ghost-vgg16', 2, 5, 7.7, 160, 0.02),
    ('ghost-vgg16', 2, 7, 7.7, 163, 0.02),
    ('ghost-vgg16', 3, 3, 5.2, 107, 0.02),
    ('ghost-vgg16', 4, 3, 4.0, 80, 0.02),
    ('ghost-vgg16', 5, 3, 3.3, 65, 0.02),
    ('resnet56', 2, 3, 0.85, 125, 0.05),
    ('ghost-resnet56', 2, 3, 0.43, 63, 0.05),
    ('resnet50', 2, 3, 25.6, 4100, 0.05),
    ('ghost-resnet50', 2, 3, 13.0, 2200, 0.05),
    ('ghost-resnet50', 4, 3, 6.5, 1200, 0.05),
]
# GhostNet's forms are held to their references instead (test_model.py, test_ghostnet_pytorch.py)
NEW_ARCHS = [name for name in ARCHITECTURES if not name.startswith('ghostnet')]
SMALL_IMAGENET = 64     # ResNet-50 at 64x64: the plumbing, not the paper's size
# Converted to LiteRT and ONNX by the others' tests: ResNet-50's ops are ResNet-56's (plain and stride-2 convs,
# projection shortcuts, the classifier) and Ghost-ResNet-50's stem (29 s of the suite for no other op)
CONVERTED_AS_OTHERS = ('resnet50',)


def parse(*flags):
    """main.py's flags in training mode (on random data, so that no --data_dir is needed)."""
    return main.parse_args(['--fake'] + list(flags))


def small_flags(arch):
    """main.py's flags for `arch` with Ghost ratio 3 (spare cheap channels sliced off), small inputs."""
    flags = ['--arch', arch] + (['--ratio', '3'] if arch.startswith('ghost-') else [])
    if ARCHITECTURES[arch].dataset != 'cifar10':
        flags += ['--image_size', str(SMALL_IMAGENET)]
    return flags


def small_model(arch, num_classes=7):
    """The network of `arch` as `small_flags` describe it."""
    return build_model(parse(*small_flags(arch)), num_classes)


@pytest.mark.parametrize('arch, ratio, dw, params, madds, tolerance', PAPER)
def test_counts_match_the_paper(arch, ratio, dw, params, madds, tolerance):
    flags = ['--arch', arch] + (['--ratio', str(ratio), '--dw', str(dw)] if arch.startswith('ghost-') else [])
    args = parse(*flags)
    graph = flops.inference_graph(build_model(args, 1000 if arch.endswith('resnet50') else 10))
    counted_params, counted_madds = flops.total_params(graph) / 1e6, flops.total_multiply_adds(graph) / 1e6
    print('{} s={} d={}: {:.3f}M params (paper {}M), {:.1f}M multiply-adds (paper {}M)'.format(
        arch, ratio, dw, counted_params, params, counted_madds, madds))
    assert counted_params == pytest.approx(params, rel=tolerance)
    assert counted_madds == pytest.approx(madds, rel=tolerance)


def randomized_graph(model, fold_bn, seed=0, by_parts=True):
    """`model` built in inference mode in a new graph; (graph, input, logits, random values by variable name)."""
    # BN scales that keep the activations' size: small in residual networks (27 blocks add up)
    gamma_range = (0.2, 0.6) if isinstance(model, (ResNet50, ResNet56)) else (0.5, 1.5)
    graph = tf.Graph()
    with graph.as_default(), TowerContext('', is_training=False), \
            argscope([ConvBN, DepthConv, SELayer], fold_bn=fold_bn, by_parts=by_parts):
        image = tfv1.placeholder(tf.float32, [None, model.image_shape, model.image_shape, 3], 'input')
        logits = model.get_logits(model.image_preprocess(image))
        variables = checkpoint_variables()
    return graph, image, logits, random_values(variables, seed, gamma_range)


@pytest.fixture(scope='module')
def ghost_vgg_ratio_3():
    """(graph, model) of ghost-vgg16 --ratio 3 built."""
    model = build_model(parse('--arch', 'ghost-vgg16', '--ratio', '3'), 10)
    return randomized_graph(model, fold_bn=False)[0], model


@pytest.mark.parametrize('saved, message', [
    ('ghost-vgg16', r'holds a checkpoint of --ratio 2 \(\S+\), but these flags build --ratio 3: '),
    ('vgg16', r'holds a checkpoint \(\S+\) of another network: VGG16/\S+ is missing \(\d+ variables missing, '
              r'\d+ of another shape\): ')])
def test_resuming_another_networks_checkpoint_is_one_error_line(ghost_vgg_ratio_3, saved, message, tmp_path):
    graph, _, _, values = randomized_graph(build_model(parse('--arch', saved), 10), fold_bn=False)
    prefix = save_checkpoint(graph, values, str(tmp_path / 'model-1'))
    resumed_graph, model = ghost_vgg_ratio_3
    with resumed_graph.as_default(), pytest.raises(CheckpointError) as error:
        ResumeInit(prefix, str(tmp_path), model)._setup_graph()
    assert re.match('^{} {}'.format(re.escape(str(tmp_path)), message), str(error.value)), str(error.value)
    assert '\n' not in str(error.value)


def ops_computing(tensor):
    """The ops a run fetching `tensor` executes."""
    ops, pending = set(), [tensor.op]
    while pending:
        op = pending.pop()
        if op not in ops:
            ops.add(op)
            pending += [t.op for t in op.inputs] + list(op.control_inputs)
    return ops


def run_graph(graph, image, logits, values, images):
    with graph.as_default(), tfv1.Session(config=without_graph_optimization()) as sess:
        load_values(sess, values)
        return sess.run(logits, {image: images})


def load_values(sess, values):
    """Every checkpoint variable of the session's graph set to its value, in one run."""
    variables = checkpoint_variables(sess.graph)
    sess.run([v.initializer for v in variables], {v.initializer.inputs[1]: values[v.op.name] for v in variables})


def random_images(model, count=6, seed=1):
    """uint8-valued BGR images (so that the served uint8 RGB images are the same ones)."""
    size = model.image_shape
    return np.random.RandomState(seed).randint(0, 256, (count, size, size, 3)).astype(np.float32)


def centered_classifier(model, values, logits):
    """Values whose classifier bias cancels the mean logits: a random network gives every image one class."""
    bias = model.scope + '/' + model.classifier_bias
    return dict(values, **{bias: values[bias] - logits.mean(0)})


def save_checkpoint(graph, values, prefix):
    """The values saved as a TF checkpoint of the graph's checkpoint variables."""
    with graph.as_default(), tfv1.Session(config=without_graph_optimization()) as sess:
        load_values(sess, values)
        return tfv1.train.Saver(checkpoint_variables()).save(sess, prefix, write_meta_graph=False)


@pytest.mark.parametrize('arch', ['ghostnet', 'ghost-resnet56'])
def test_inference_by_parts_matches_the_concatenations_and_batch_norm(arch):
    """An inference tower takes the Ghost modules' outputs by parts (the default): the same logits as
    with the concatenations, and as with batch norm unfolded (which takes no parts)."""
    model = small_model(arch)
    images = random_images(model)
    graph, image, logits, values = randomized_graph(model, fold_bn=False)
    values = centered_classifier(model, values, run_graph(graph, image, logits, values, images))
    unfolded = run_graph(graph, image, logits, values, images)
    tolerance = dict(rtol=1e-4, atol=1e-4 * np.abs(unfolded).max())
    concats = {}
    for by_parts in (True, False):
        folded_graph = randomized_graph(model, fold_bn=True, by_parts=by_parts)[:3]
        np.testing.assert_allclose(run_graph(*folded_graph, values, images), unfolded, **tolerance)
        concats[by_parts] = sum(op.type == 'ConcatV2' for op in ops_computing(folded_graph[2]))
    assert len(set(unfolded.argmax(1))) > 1
    assert 0 < concats[True] < concats[False]    # by parts, some concatenations are never built


@pytest.mark.parametrize('arch', NEW_ARCHS)
def test_exported_folded_inference_matches_the_training_graph(arch, tmp_path):
    """The SavedModel (batch norm folded, the Ghost modules' outputs taken by parts, as every inference graph),
    then LiteRT and ONNX, against the training graph in inference mode."""
    model = small_model(arch)
    images = random_images(model)
    graph, image, logits, values = randomized_graph(model, fold_bn=False)
    values = centered_classifier(model, values, run_graph(graph, image, logits, values, images))
    unfolded = run_graph(graph, image, logits, values, images)
    assert unfolded.shape == (len(images), 7) and len(set(unfolded.argmax(1))) > 1
    tolerance = dict(rtol=1e-4, atol=1e-4 * np.abs(unfolded).max())

    checkpoint = save_checkpoint(graph, values, str(tmp_path / 'model'))
    stored = tf.train.load_checkpoint(checkpoint).get_variable_to_shape_map()
    assert stored.keys() == values.keys() and all(name.startswith(model.scope + '/') for name in stored)
    assert export.checkpoint_num_classes(ARCHITECTURES[arch].model, checkpoint) == 7
    graph_def = export.frozen_serving_graph(model, checkpoint)
    directory = export.save_saved_model(graph_def, model.image_shape, str(tmp_path / 'saved_model'))
    rgb = images[..., ::-1].astype(np.uint8)
    served = tf.saved_model.load(directory).signatures['serving_default'](images=tf.constant(rgb))
    np.testing.assert_allclose(served['logits'].numpy(), unfolded, **tolerance)
    np.testing.assert_array_equal(served['top5'].numpy()[:, 0], unfolded.argmax(1))
    if arch in CONVERTED_AS_OTHERS:
        return
    tflite = export.export_tflite(directory, str(tmp_path / 'model.tflite'))
    onnx = export.save_onnx(graph_def, str(tmp_path / 'model.onnx'))
    for name, served_logits in (('TFLite', Interpreter(tflite).get_signature_runner()(images=rgb)['logits']),
                                ('ONNX', onnxruntime.InferenceSession(onnx).run(['logits'], {'images': rgb})[0])):
        # XNNPACK and ONNX Runtime sum in other orders: within 1e-3 of the largest logit, as for GhostNet
        np.testing.assert_allclose(served_logits, unfolded, rtol=1e-3, atol=1e-3 * np.abs(unfolded).max(),
                                   err_msg=name)
        np.testing.assert_array_equal(served_logits.argmax(1), unfolded.argmax(1), err_msg=name)


def test_ghost_networks_share_the_baselines_code_and_scope():
    for ghost, plain in (('ghost-vgg16', 'vgg16'), ('ghost-resnet56', 'resnet56'), ('ghost-resnet50', 'resnet50')):
        assert ARCHITECTURES[ghost].model is ARCHITECTURES[plain].model
        assert small_model(ghost).classifier_scope == small_model(plain).classifier_scope


def test_recipes_are_the_defaults_and_flags_override_them():
    args = parse('--arch', 'ghost-resnet56')
    assert (args.batch, args.epochs, args.lr * args.batch / 256, args.weight_decay, args.label_smoothing,
            args.lr_schedule, args.image_size, args.ratio, args.dw) == (128, 164, 0.1, 1e-4, 0, 'step', 32, 2, 3)
    args = parse('--arch', 'resnet50', '--epochs', '9', '--lr_decay_at', '1/2')
    assert (args.batch, args.epochs, args.label_smoothing, args.lr_decay_fractions) == (256, 9, 0, [0.5])
    args = parse()
    assert (args.arch, args.batch, args.epochs, args.lr_schedule, args.weight_decay, args.label_smoothing) == (
        'ghostnet', 1024, 400, 'cosine', 4e-5, 0.1)


@pytest.mark.parametrize('flags, momentum, nesterov', [
    ([], 0.9, True), (['--arch', 'resnet50'], 0.9, False), (['--arch', 'ghost-vgg16'], 0.9, False),
    (['--arch', 'resnet56', '--momentum', '0.8', '--nesterov', '1'], 0.8, True)])
def test_the_optimizer_is_the_recipes_sgd(flags, momentum, nesterov):
    model = build_model(parse(*flags), 10)
    with tf.Graph().as_default():
        optimizer = model.get_optimizer()
    assert (optimizer._momentum, optimizer._use_nesterov) == (momentum, nesterov)


@pytest.mark.parametrize('arch, epochs, divisions', [('resnet56', 8, (4, 6)), ('ghost-vgg16', 164, (82, 123)),
                                                     ('resnet50', 90, (30, 60))])
def test_step_schedule_divides_at_its_fractions_of_training(arch, epochs, divisions):
    steps_per_epoch = 10
    args = parse('--arch', arch, '--epochs', str(epochs))
    schedule = main.learning_rate_schedule(args, steps_per_epoch)
    base = args.lr * args.batch / 256
    first, second = (epoch * steps_per_epoch for epoch in divisions)
    assert schedule.value_at(0) == schedule.value_at(first - 1) == pytest.approx(base)
    assert schedule.value_at(first) == schedule.value_at(second - 1) == pytest.approx(base / 10)
    assert schedule.value_at(second) == schedule.value_at(epochs * steps_per_epoch) == pytest.approx(base / 100)


@pytest.mark.parametrize('flags, message', [
    (['--arch', 'resnet50', '--ratio', '3'], '--ratio and --dw set the Ghost modules of the ghost-* networks'),
    (['--ratio', '3'], 'GhostNet takes --ratio_code_str'),
    (['--arch', 'ghost-vgg16', '--dw_code_str', '3'], "--dw_code_str and --ratio_code_str are GhostNet's"),
    (['--arch', 'vgg16', '--image_size', '64'], '--image_size is 32 for the CIFAR-10 networks'),
    (['--arch', 'resnet56', '--lr_decay_at', '3/4,1/2'], '--lr_decay_at: increasing fractions'),
    (['--arch', 'resnet56', '--lr_decay_at', 'half'], '--lr_decay_at takes fractions'),
    (['--arch', 'ghost-resnet56', '--ratio', '0'], '--ratio and --dw must be positive'),
    (['--arch', 'ghost-resnet56', '--dw', '0'], '--ratio and --dw must be positive'),
    (['--arch', 'resnet56', '--width_ratio', '0.5'], "--width_ratio and --se are GhostNet's"),
    (['--steps_per_epoch', '0'], '--steps_per_epoch must be positive (got 0)'),
    (['--lr', '-0.1'], '--lr must be at least 0 (got -0.1)'),
    (['--dropout_keep_prob', '0'], '--dropout_keep_prob must be above 0 and at most 1 (got 0.0)'),
    (['--label_smoothing', '1'], '--label_smoothing must be at least 0 and below 1 (got 1.0)'),
    (['--min_crop_area', '1.5'], '--min_crop_area must be above 0 and at most 1 (got 1.5)'),
    (['--warmup_epochs', '-1'], '--warmup_epochs must be at least 0 (got -1.0)'),
    (['--weight_decay=-1e-4'], '--weight_decay must be at least 0 (got -0.0001)'),
    (['--momentum', '1'], '--momentum must be at least 0 and below 1 (got 1.0)'),
])
def test_bad_flags_are_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(*flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_lists_every_network_on_a_line(capsys):
    with pytest.raises(SystemExit):
        parse('--help')
    out = capsys.readouterr().out
    for name, arch in ARCHITECTURES.items():
        assert '  {:16s}{}\n'.format(name, arch.help) in out


@pytest.mark.parametrize('arch, ratio, params', [('ghost-vgg16', 4, '3,982,874'), ('resnet56', None, '853,018')])
def test_flops_cli_prints_the_table_and_total(arch, ratio, params, capsys):
    flags = ['--flops', '--arch', arch] + (['--ratio', str(ratio)] if ratio else [])
    assert main.main(flags) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith('Total: ' + params)
    assert any(line.startswith(ARCHITECTURES[arch].model.scope + '/Logits/fc ') for line in lines)
