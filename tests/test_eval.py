"""main.py end to end on a generated sample: errors against numpy, layouts, checkpoints, bad input, demo; the
demo's trained model exported by main.py to every format, as a user runs them (the CIFAR-10 counterpart is in
test_cifar.py; every network's export parity is tested in-process in test_plugin.py)."""
import os
import re
import shutil

import numpy as np
import onnxruntime
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from conftest import (REFERENCE_DIR, SAMPLE, main_error, run_main, run_main_py, SMALL_IMAGE_SIZE, SMALL_WIDTH,
                      build_inference_graph, needs_reference, write_random_checkpoint)

from deploy import export
from deploy.calibration import image_files
import main
from ghostnet import GhostNet
from weights.checkpoint import CheckedInit, check_checkpoint, checkpoint_variables
from imagenet_utils import (decode_image, eval_augmentor, evaluate, evaluation_session_config, get_val_dataflow,
                            list_val_images)
from test_plugin import random_images, randomized_graph, run_graph

tfv1 = tf.compat.v1
SMALL = ['--width_ratio', str(SMALL_WIDTH), '--image_size', str(SMALL_IMAGE_SIZE), '--batch', '5',
         '--workers', '2']
AGREEMENT_BOUND = 0.3   # int8 against float top-1 (chance 0.1; a broken top-5 gave 0.05); this tiny, barely
#                         trained demo model has low-margin logits: 0.32-0.92 measured across demo runs
NUM_VAL = SAMPLE['num_classes'] * SAMPLE['val_per_class']
REFERENCE = os.path.join(REFERENCE_DIR, 'ghostnet_checkpoint')


def run_cli(*args):
    """main.py in a subprocess: (exit status, stdout, stderr)."""
    proc = run_main_py(*args)
    return proc.returncode, proc.stdout, proc.stderr


def reported_errors(stdout, num_images=NUM_VAL):
    """(top1, top5) from the last lines, checking the released format and the line before them."""
    lines = stdout.rstrip('\n').split('\n')
    assert re.fullmatch(r'Evaluated {} images in [\d.]+ s: [\d.]+ images/s after the first batch \(\d+ images '
                        r'in [\d.]+ s: the graph\'s first run\)'.format(num_images), lines[-3]), lines[-3:]
    top1 = re.fullmatch(r'Top1 Error: ([\d.e-]+)', lines[-2])
    top5 = re.fullmatch(r'Top5 Error: ([\d.e-]+)', lines[-1])
    assert top1 and top5, lines[-2:]
    return float(top1.group(1)), float(top5.group(1))


@pytest.fixture(scope='module')
def expected_errors(sample_dirs, random_checkpoint):
    """Top-1/top-5 error from the logits of a plain session and numpy: the second code path."""
    data_dir = sample_dirs['flat']
    examples = list_val_images(data_dir, os.path.join(data_dir, 'caffe_ilsvrc12'))
    augmentor = eval_augmentor(SMALL_IMAGE_SIZE)
    images = np.stack([augmentor.augment(decode_image(path)) for path, _ in examples]).astype(np.float32)
    labels = np.array([label for _, label in examples])
    with tf.Graph().as_default():
        build_inference_graph()
        with tfv1.Session() as sess:
            tfv1.train.Saver().restore(sess, random_checkpoint['prefix'])
            logits = sess.run('logits:0', {'input:0': images})
    ranking = np.argsort(-logits, axis=1)
    top1 = np.mean(ranking[:, 0] != labels)
    top5 = np.mean([label not in ranks[:5] for label, ranks in zip(labels, ranking)])
    assert 0 < top1 < 1 and 0 < top5 < 1   # the comparison can tell right from wrong
    return top1, top5


def test_cli_eval_matches_python_api(sample_dirs, random_checkpoint, expected_errors):
    status, out, err = run_cli('--eval', '--data_dir=' + sample_dirs['flat'],
                               '--load=' + random_checkpoint['prefix'], *SMALL)
    assert status == 0, err
    assert reported_errors(out) == pytest.approx(expected_errors, abs=1e-12)
    assert 'Evaluating' in err   # the progress bar


def test_subfolder_layout_and_log_directory_give_same_numbers(capfd, sample_dirs, random_checkpoint,
                                                              expected_errors):
    out = run_main(capfd, '--eval', '--data_dir', sample_dirs['subfolders'],
                   '--load', random_checkpoint['log_dir'], *SMALL)
    assert reported_errors(out) == pytest.approx(expected_errors, abs=1e-12)


def test_two_towers_on_two_cpu_devices_give_same_numbers(sample_dirs, random_checkpoint, expected_errors):
    """Two towers, on /cpu:0 and /cpu:1 of a two-device session (no soft placement), share the staged batches
    and add up to the same errors."""
    examples = list_val_images(sample_dirs['flat'], os.path.join(sample_dirs['flat'], 'caffe_ilsvrc12'))
    model = main.build_model(main.parse_args(['--eval', '--data_dir', sample_dirs['flat']] + SMALL), 1000)
    dataflow = get_val_dataflow(examples, 2, SMALL_IMAGE_SIZE, workers=2)
    config = evaluation_session_config()
    config.device_count['CPU'] = 2
    config.allow_soft_placement = False
    result = evaluate(model, CheckedInit(random_checkpoint['npz']), dataflow, ['/cpu:0', '/cpu:1'], config)
    assert (result.top1, result.top5) == pytest.approx(expected_errors, abs=1e-12)
    assert result.images == NUM_VAL and sum(result.tower_batches) == NUM_VAL // 2
    assert min(result.tower_batches) >= 1      # each tower took batches
    # the first phase lasts until each tower's first run (its own graph optimization) ends
    assert 2 * 2 <= result.first_images <= NUM_VAL and 0 < result.first_seconds <= result.seconds


def test_checkpoint_that_does_not_fit_stops_before_evaluation(capfd, tmp_path, sample_dirs):
    """A width-0.5 checkpoint lacking one variable, loaded into the width-0.25 model."""
    checkpoint = write_random_checkpoint(str(tmp_path / 'wide'), width=0.5,
                                         drop=('MobileNetV2/Conv2d_5_se/fc1/b',))
    message = main_error(capfd, '--eval', '--data_dir', sample_dirs['flat'], '--load', checkpoint, *SMALL,
                         lines=14)      # the first line, the missing one, 398 of another shape cut to 10
    assert message.startswith('error: checkpoint {} does not fit the model'.format(checkpoint))
    assert '  missing from the checkpoint (1): MobileNetV2/Conv2d_5_se/fc1/b\n' in message
    assert re.search(r'  with another shape \(\d+\):\n    MobileNetV2/Conv2d_10_\S+: checkpoint '
                     r'\[[\d, ]+\], model \[[\d, ]+\]', message)


@needs_reference
def test_released_index_fits_the_width_1_model():
    with tf.Graph().as_default():
        build_inference_graph(width=1.0)
        assert check_checkpoint(REFERENCE, checkpoint_variables()) == ([], [])


def test_checkpoint_path_errors(capfd, tmp_path, sample_dirs, random_checkpoint):
    args = ['--eval', '--data_dir', sample_dirs['flat']] + SMALL
    absent = str(tmp_path / 'absent')
    assert '{}.index does not exist'.format(absent) in main_error(capfd, *args, '--load', absent)
    assert 'without a checkpoint' in main_error(capfd, *args, '--load', str(tmp_path))
    index_only = tmp_path / 'index_only'
    shutil.copy(random_checkpoint['prefix'] + '.index', str(index_only) + '.index')
    assert 'no {}.data-* file'.format(index_only) in main_error(capfd, *args, '--load', str(index_only))
    assert '{} does not exist'.format(tmp_path / 'x.npz') in main_error(
        capfd, *args, '--load', str(tmp_path / 'x.npz'))


def test_data_errors(capfd, tmp_path, sample_dirs):
    missing = str(tmp_path / 'missing')
    assert '--data_dir {} does not exist'.format(missing) in main_error(
        capfd, '--eval', '--data_dir', missing, *SMALL)
    data_dir = shutil.copytree(sample_dirs['flat'], str(tmp_path / 'data'))
    meta_dir = os.path.join(data_dir, 'caffe_ilsvrc12')
    os.remove(os.path.join(data_dir, 'val', 'ILSVRC2012_val_00000002.JPEG'))
    assert ('1 of the images listed in {} are not in {} (flat or under <wnid>/): '
            'ILSVRC2012_val_00000002.JPEG'.format(os.path.join(meta_dir, 'val.txt'),
                                                  os.path.join(data_dir, 'val'))
            in main_error(capfd, '--eval', '--data_dir', data_dir, *SMALL))
    shutil.rmtree(os.path.join(data_dir, 'val'))
    assert '{} not found'.format(os.path.join(data_dir, 'val')) in main_error(
        capfd, '--eval', '--data_dir', data_dir, *SMALL)


def test_missing_metadata_is_one_error_line(tmp_path, sample_dirs):
    data_dir = shutil.copytree(sample_dirs['flat'], str(tmp_path / 'data'))
    meta_dir = os.path.join(data_dir, 'caffe_ilsvrc12')
    shutil.rmtree(meta_dir)
    status, out, err = run_cli('--eval', '--data_dir', data_dir, *SMALL)
    assert status == 1 and 'Traceback' not in err
    assert err.rstrip('\n').split('\n')[-1].startswith('error: {} does not exist'.format(meta_dir))
    assert not os.path.exists(meta_dir)


def test_undecodable_image_stops_naming_it(capfd, tmp_path, sample_dirs):
    data_dir = shutil.copytree(sample_dirs['flat'], str(tmp_path / 'data'))
    bad = os.path.join(data_dir, 'val', 'ILSVRC2012_val_00000007.JPEG')
    with open(bad, 'wb') as f:
        f.write(b'\xff\xd8 not really a JPEG')
    message = main_error(capfd, '--eval', '--data_dir', data_dir, *SMALL)
    assert message == ('error: {}: can not be decoded as an image '
                       '(--skip_bad_images skips such images)'.format(bad))


def test_skip_bad_images_reports_them(capfd, tmp_path, sample_dirs):
    data_dir = shutil.copytree(sample_dirs['flat'], str(tmp_path / 'data'))
    bad = [os.path.join(data_dir, 'val', 'ILSVRC2012_val_0000000{}.JPEG'.format(i)) for i in (3, 9)]
    for path in bad:
        open(path, 'wb').close()
    out = run_main(capfd, '--eval', '--data_dir', data_dir, '--skip-bad-images', *SMALL)
    reported_errors(out, NUM_VAL - 2)
    assert 'Skipped 2 images that could not be decoded: {}, {}'.format(*bad) in out


def test_usage_errors(capfd):
    for args, text in ((['--eval'], '--data_dir is needed'), ([], '--data_dir is needed'),
                       (['--predict', 'a.jpg'], 'need --load'),
                       (['--eval', '--flops'], 'choose one of'),
                       (['--fake', '--tflite'], 'go with --export OUT_DIR'),
                       (['--flops', '--dw_code_str', '3,3'], '--dw_code_str: expected 16')):
        with pytest.raises(SystemExit) as stop:
            main.main(args)
        assert stop.value.code == 2 and text in capfd.readouterr().err


def test_flops_table_and_totals(capfd):
    out = run_main(capfd, '--flops')
    assert re.search(r'MobileNetV2/Conv2d_0 +Conv2D +\[1, 112, 112, 16\] +464 +5,419,008', out)
    assert 'Total: 5,183,016 parameters' in out and '(141M' in out
    assert 'TensorFlow profiler:' in out and 'counts a multiply-add as two' in out


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    """`main.py --demo` on a small model: (its data directory, exit status, stdout, stderr)."""
    data_dir = str(tmp_path_factory.mktemp('demo') / 'demo')
    run = run_main_py('--demo', '--data_dir', data_dir, '--width_ratio', str(SMALL_WIDTH),
                      '--image_size', str(SMALL_IMAGE_SIZE), '--workers', '2', verbose=False)
    return data_dir, run.returncode, run.stdout, run.stderr


def test_demo_writes_a_sample_trains_and_evaluates(demo):
    data_dir, status, out, err = demo
    assert status == 0, err
    top1, _ = reported_errors(out, 100)
    assert top1 < 0.7                       # 10 classes: chance is 0.9; 0.18-0.63 seen
    assert 'Training done at global step 60' in out      # the demo's 10 epochs of 6 steps
    assert tf.train.latest_checkpoint(os.path.join(data_dir, 'train_log')).endswith('model-60')
    assert os.path.isfile(os.path.join(data_dir, 'caffe_ilsvrc12', 'synsets.txt'))
    assert len(os.listdir(os.path.join(data_dir, 'val'))) == 100


def test_the_demo_is_quiet_results_on_stdout_progress_on_stderr(demo):
    _, status, out, err = demo
    assert status == 0, err
    assert [line.split(' ')[0] for line in out.splitlines()] == ['Training', 'Evaluated', 'Top1', 'Top5']
    lines = re.split('[\r\n]', err)
    assert max(len(line) for line in lines) <= 300
    assert not [line for line in lines if re.match(r'[IWEF]\d{4} |WARNING: All log|\[\d{4} [\d:]+ @\S+\] (?!WRN|ERR)', line)]
    assert 'Validation: 100%' in err       # the progress bars


def test_int8_export_of_the_demo_model_agrees_with_float(demo, tmp_path):
    data_dir, status, _, err = demo
    assert status == 0, err
    model = GhostNet(num_classes=10, width=SMALL_WIDTH, image_shape=SMALL_IMAGE_SIZE)
    checkpoint = os.path.join(data_dir, 'train_log')
    val = export.load_rgb_batch(image_files(os.path.join(data_dir, 'val')), model)
    float_file, int8_file = export.export(model, checkpoint, str(tmp_path), quantize='int8',
                                          representative=os.path.join(data_dir, 'train'),
                                          validate=os.path.join(data_dir, 'val'), bounds=(AGREEMENT_BOUND, 1))[1:]
    predictions = {path: Interpreter(path).get_signature_runner()(images=val)['logits'].argmax(1)
                   for path in (float_file, int8_file)}
    agreement = np.mean(predictions[int8_file] == predictions[float_file])
    print('int8 against float TFLite: top-1 agreement {:.0%} on {} images'.format(agreement, len(val)))
    assert agreement >= AGREEMENT_BOUND


def test_the_demo_model_exports_to_every_format_with_parity(demo, tmp_path):
    """main.py --export --tflite --onnx on the demo's training checkpoint: each file against the training graph
    in inference mode (batch norm unfolded) on that checkpoint."""
    data_dir, status, _, err = demo
    assert status == 0, err
    logdir, out = os.path.join(data_dir, 'train_log'), str(tmp_path / 'export')
    run = run_main_py('--load', logdir, '--export', out, '--tflite', '--onnx', *SMALL[:4], verbose=False)
    assert run.returncode == 0, run.stderr[-3000:]
    model = GhostNet(num_classes=10, width=SMALL_WIDTH, image_shape=SMALL_IMAGE_SIZE)
    graph, image, logits, values = randomized_graph(model, fold_bn=False)
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(logdir))
    images = random_images(model)
    reference = run_graph(graph, image, logits, {name: reader.get_tensor(name) for name in values}, images)
    rgb = images[..., ::-1].astype(np.uint8)
    file = os.path.join(out, 'ghostnet')
    served = {
        'SavedModel': tf.saved_model.load(os.path.join(out, 'saved_model')).signatures['serving_default'](
            images=tf.constant(rgb))['logits'].numpy(),
        'TFLite': Interpreter(file + '.tflite').get_signature_runner()(images=rgb)['logits'],
        'ONNX': onnxruntime.InferenceSession(file + '.onnx').run(['logits'], {'images': rgb})[0]}
    for name, served_logits in served.items():
        np.testing.assert_allclose(served_logits, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max(),
                                   err_msg=name)


def test_nchw_without_gpu_is_a_usage_error(capfd, sample_dirs):
    if tf.config.list_physical_devices('GPU'):
        pytest.skip('a GPU is visible')
    assert 'NCHW needs a GPU' in main_error(capfd, '--eval', '--data_dir', sample_dirs['flat'],
                                            '--data-format', 'NCHW', *SMALL)
