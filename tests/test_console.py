"""A quiet first run: results alone on stdout; on stderr no TensorFlow start-up notes, no long line, and
every log line only with --verbose. The router that holds TensorFlow's native notes back."""
import logging
import os
import re

import cv2
import numpy as np
import pytest

from conftest import SMALL_IMAGE_SIZE, SMALL_WIDTH, run_main_py, write_random_checkpoint
from data.imagenet_classes import synset_words
from runtime.console import LONGEST_LINE, DropNoise, ShortLines
from runtime.native_log_router import CONTROL_PREFIX, Router

TOP5_LINE = re.compile(r'^  \d\.\d{4}  n\d{8} \S')


@pytest.fixture(scope='module')
def checkpoint_and_image(tmp_path_factory):
    root = tmp_path_factory.mktemp('console')
    prefix = str(root / 'model')
    write_random_checkpoint(prefix, favoured_classes=5)
    image = str(root / 'image.jpg')
    cv2.imwrite(image, np.random.RandomState(0).randint(0, 256, (50, 60, 3)).astype(np.uint8))
    return prefix, image


@pytest.fixture(scope='module')
def quiet_run(checkpoint_and_image, tmp_path_factory):
    """`main.py --predict IMG --export OUT --tflite` without --verbose: (out dir, stdout, stderr)."""
    prefix, image = checkpoint_and_image
    out_dir = str(tmp_path_factory.mktemp('console_out') / 'out')
    run = run_main_py('--predict', image, '--export', out_dir, '--tflite', '--load', prefix,
                      '--width_ratio', str(SMALL_WIDTH), '--image_size', str(SMALL_IMAGE_SIZE), verbose=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return out_dir, run.stdout, run.stderr


def test_export_and_predict_print_their_results_alone(quiet_run, checkpoint_and_image):
    out_dir, out, err = quiet_run
    lines = out.splitlines()
    assert lines[0].startswith('Wrote SavedModel') and os.path.join(out_dir, 'saved_model') in lines[0]
    assert lines[1].startswith('Wrote TFLite') and os.path.join(out_dir, 'ghostnet.tflite') in lines[1]
    assert lines[2] == checkpoint_and_image[1] and len(lines) == 8
    assert all(TOP5_LINE.match(line) for line in lines[3:]), out
    assert err == ''


def test_predict_names_imagenet_classes_without_metadata(quiet_run):
    names = {line.split(None, 1)[1] for line in quiet_run[1].splitlines()[3:]}
    assert names == set(synset_words()[:5])     # the favoured classes, by their ImageNet names


def test_the_shipped_class_list_is_caffes_order_of_imagenet_1k():
    words = synset_words()
    wnids = [line.split()[0] for line in words]
    assert len(set(wnids)) == 1000 and wnids == sorted(wnids) and all(re.match(r'n\d{8}$', w) for w in wnids)
    assert words[0] == 'n01440764 tench, Tinca tinca' and words[999].startswith('n15075141 toilet tissue')


def test_router_holds_back_native_notes_passes_the_rest_and_writes_the_log(capfd, tmp_path):
    router, log = Router(), tmp_path / 'log.log'
    notes = [b'I0000 00:00:1796225649.480498    6529 port.cc:153] oneDNN custom operations are on.\n',
             b'W0000 00:00:1796225964.012355    6529 local_rendezvous.cc:412] Local rendezvous is aborting\n',
             b'\t [[{{node QueueInput/input_queue_enqueue}}]]\n']
    other = [b'E0000 00:00:17962256.48 6529 some_kernel.cc:12] a real error\n', b'Fatal Python error: x\n']
    for line in notes[:1] + other[:1] + notes[1:] + other[1:]:
        router.route(line)
    router.route(CONTROL_PREFIX + str(log).encode() + b'\n')
    router.route(notes[0])
    assert capfd.readouterr().err.encode() == b''.join(other)
    assert log.read_bytes() == b''.join(notes + notes[:1])


def test_long_log_lines_are_cut_on_the_terminal_only():
    record = logging.LogRecord('tensorpack', logging.WARNING, 'x.py', 1, 'y' * 1000, None, None)
    assert len(ShortLines(logging.Formatter('%(message)s')).format(record)) <= LONGEST_LINE


def test_a_print_style_log_call_keeps_its_text_and_raises_nothing():
    """tensorpack logs "Training failed at global_step=" with the step as a print-style argument; the filter
    must not raise there (its error hid the exception that ended training)."""
    record = logging.LogRecord('tensorpack', logging.ERROR, 'x.py', 1, 'Training failed at global_step=', (7,), None)
    assert DropNoise().filter(record)
    assert record.getMessage() == 'Training failed at global_step= 7'
