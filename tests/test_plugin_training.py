"""An ImageNet plug-in network trained by main.py for a few steps (--fake), then exported by main.py
--export to a SavedModel, TFLite and ONNX: each file against the training graph in inference mode on
that checkpoint, as a user runs them.

The CIFAR-10 one (ghost-resnet56, on CIFAR-format files) is in test_cifar.py; every network's export
parity is tested in-process in test_plugin.py.
"""
import os

import numpy as np
import onnxruntime
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from conftest import run_main_py

from networks import ARCHITECTURES, DATASET_CLASSES
from test_plugin import random_images, randomized_graph, run_graph, small_flags, small_model

STEPS = 2
ARCHS = ['ghost-resnet50']


def run_main(*flags):
    proc = run_main_py(*flags, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.parametrize('arch', ARCHS)
def test_trained_checkpoint_exports_to_every_format_with_parity(arch, tmp_path):
    logdir, out = str(tmp_path / 'log'), str(tmp_path / 'export')
    log = run_main(*small_flags(arch), '--fake', '--logdir', logdir, '--batch', '4', '--epochs', '1',
                   '--steps_per_epoch', str(STEPS), '--lr', '0.01')
    assert 'Training done at global step {}'.format(STEPS) in log
    run_main(*small_flags(arch), '--load', logdir, '--export', out, '--tflite', '--onnx')

    checkpoint = tf.train.latest_checkpoint(logdir)
    reader = tf.train.load_checkpoint(checkpoint)
    assert 'global_step' in reader.get_variable_to_shape_map()     # a training checkpoint, not just weights
    model = small_model(arch, num_classes=DATASET_CLASSES[ARCHITECTURES[arch].dataset])   # --fake's classes
    graph, image, logits, random_values = randomized_graph(model, fold_bn=False)
    values = {name: reader.get_tensor(name) for name in random_values}
    images = random_images(model)
    reference = run_graph(graph, image, logits, values, images)
    rgb = images[..., ::-1].astype(np.uint8)
    served = {
        'SavedModel': tf.saved_model.load(os.path.join(out, 'saved_model')).signatures['serving_default'](
            images=tf.constant(rgb))['logits'].numpy(),
        'TFLite': Interpreter(os.path.join(out, arch + '.tflite')).get_signature_runner()(images=rgb)['logits'],
        'ONNX': onnxruntime.InferenceSession(os.path.join(out, arch + '.onnx')).run(['logits'], {'images': rgb})[0],
    }
    for name, served_logits in served.items():
        np.testing.assert_allclose(served_logits, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max(),
                                   err_msg=name)
