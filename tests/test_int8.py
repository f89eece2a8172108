"""int8 on trained models: GhostNet and Ghost-ResNet-56 trained on scikit-learn's digits (real handwritten
images; their weights in tests/data, written by tests/digits.py), exported by main.py --export --quantize int8
in this process, which prints the int8 file's agreement; the int8 file against the float file on held-back
digits, in LiteRT's Interpreter and CompiledModel APIs; main.py --export refuses a file below the bounds."""
import contextlib
import io
import os
import re
from unittest import mock

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import digits
import main
from deploy import agreement, export
from deploy.calibration import image_files
from ghostnet import GhostNet
from test_export import run_compiled_model

HELD_BACK = digits.HELD_BACK


def model_flags(arch, checkpoint):
    """main.py's flags for the network `digits.build(arch)` with `checkpoint`."""
    if arch == 'ghostnet':
        return ['--load', checkpoint, '--width_ratio', str(digits.GHOSTNET_WIDTH), '--image_size', str(digits.SIZE)]
    return ['--load', checkpoint, '--arch', arch]


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    """{"train": the training digits in class folders, "val": the held-back ones}."""
    images, labels = digits.digit_images(digits.SIZE)
    train, held_back = digits.split(images, labels, HELD_BACK)
    root = tmp_path_factory.mktemp('digits')
    return {'train': digits.write_class_folders(str(root / 'train'), *train),
            'val': digits.write_class_folders(str(root / 'val'), *held_back)}


@pytest.fixture(scope='module', params=['ghostnet', 'ghost-resnet56'])
def exported(request, folders, tmp_path_factory):
    """A network trained on the training digits, exported by `main.py --export OUT --quantize int8`
    in this process (calibrated on them, checked on the held-back ones): (model, checkpoint, float file,
    int8 file, what the export printed)."""
    arch, model = request.param, digits.build(request.param)
    directory = tmp_path_factory.mktemp(arch)
    checkpoint = digits.trained_weights(arch, str(directory))
    out_dir, printed = str(directory / 'export'), io.StringIO()
    with contextlib.redirect_stdout(printed):
        main.main(['--export', out_dir, '--quantize', 'int8', '--representative', folders['train'],
                   '--validate', folders['val'], *model_flags(arch, checkpoint)])
    float_file = os.path.join(out_dir, arch + '.tflite')
    return model, checkpoint, float_file, float_file[:-len('.tflite')] + '_int8.tflite', printed.getvalue()


def held_back(model, folders):
    """The held-back digits as the files are fed (uint8 RGB, preprocessed), and their labels."""
    paths = image_files(folders['val'])
    labels = np.array([int(os.path.basename(os.path.dirname(path))) for path in paths])
    return export.load_rgb_batch(paths, model), labels


@pytest.mark.parametrize('runtime', ['Interpreter', 'CompiledModel'])
def test_int8_agrees_with_float_on_held_back_digits(exported, folders, runtime):
    model, _, float_file, int8_file, _ = exported
    images, labels = held_back(model, folders)
    run = {'Interpreter': lambda path: Interpreter(path, num_threads=2).get_signature_runner()(images=images),
           'CompiledModel': lambda path: run_compiled_model(path, images)}[runtime]
    float_top1, int8_top1 = (run(path)['logits'].argmax(1) for path in (float_file, int8_file))
    float_error, int8_error = np.mean(float_top1 != labels), np.mean(int8_top1 != labels)
    agreement_ = np.mean(float_top1 == int8_top1)
    print('{} {}: agreement {:.4f}, error {:.4f} (float {:.4f})'.format(
        os.path.basename(int8_file), runtime, agreement_, int8_error, float_error))
    assert float_error < 0.2                      # the model has learned: chance is 0.9
    assert agreement_ >= agreement.MIN_AGREEMENT
    assert int8_error <= float_error + agreement.MAX_ERROR_RISE


def test_int8_file_ends_at_the_logits(exported):
    interpreter = Interpreter(exported[3])
    assert list(interpreter.get_signature_list()['serving_default']['outputs']) == ['logits']
    interpreter.allocate_tensors()
    assert {detail['dtype'] for detail in interpreter.get_tensor_details()} >= {np.int8}


def test_cli_export_prints_agreement_and_both_errors(exported):
    _, _, float_file, int8_file, printed = exported
    line = re.search(r'(\S+) against (\S+): top-1 agreement ([\d.]+) on (\d+) held-back images, '
                     r'top-1 error ([\d.]+) \(float ([\d.]+)\)', printed)
    assert line, printed[-2000:]
    assert (line[1], line[2], int(line[4])) == (int8_file, float_file, HELD_BACK)
    agreement_, int8_error, float_error = float(line[3]), float(line[5]), float(line[6])
    assert agreement_ >= agreement.MIN_AGREEMENT and int8_error <= float_error + agreement.MAX_ERROR_RISE


@pytest.fixture(scope='module')
def ghostnet_checkpoint(exported):
    if not isinstance(exported[0], GhostNet):
        pytest.skip('the command-line error tests use the GhostNet checkpoint')
    return exported[1]


def test_cli_export_below_the_bounds_is_one_error_naming_the_kept_files(ghostnet_checkpoint, folders, tmp_path,
                                                                         capfd):
    low = agreement.Agreement(HELD_BACK, 0.5, 0.05, 0.4)
    with mock.patch.object(agreement, 'measure', return_value=low), pytest.raises(SystemExit) as stop:
        main.main(['--export', str(tmp_path), '--quantize', 'dynamic', '--validate', folders['val'],
                   *model_flags('ghostnet', ghostnet_checkpoint)])
    message = str(stop.value.code)
    assert 'Traceback' not in capfd.readouterr().err
    assert message.startswith('error: --quantize dynamic: ') and '\n' not in message
    for name in ('ghostnet_dynamic.tflite', 'ghostnet.tflite'):
        assert os.path.join(str(tmp_path), name) in message and os.path.isfile(os.path.join(str(tmp_path), name))
    assert 'agreement below 0.97' in message and 'error more than 0.02 above float' in message


def test_quantization_needs_images_to_be_checked_on(ghostnet_checkpoint, tmp_path, capfd):
    with pytest.raises(SystemExit) as stop:
        main.main(['--export', str(tmp_path), '--quantize', 'dynamic', *model_flags('ghostnet', ghostnet_checkpoint)])
    assert str(stop.value.code).startswith('error: --quantize dynamic needs --validate DIR')
    assert os.listdir(str(tmp_path)) == []
