"""The data side of evaluation: metadata, val layouts, decoding, preprocessing, the dataflow, the sample."""
import itertools
import os
import shutil
import threading

import cv2
import numpy as np
import pytest
from conftest import SAMPLE
from tensorpack.dataflow import DataFromList

from imagenet_utils import (DataError, decode_image, eval_augmentor, get_val_dataflow,
                            list_val_images, read_split_list, read_synsets)
from data.samples import write_sample_dataset
from runtime.workers import OrderedWatchedMapData, WatchedMapData


def meta(root):
    return os.path.join(root, 'caffe_ilsvrc12')


def collect(dataflow):
    """Every (label, image bytes) the dataflow yields, in order, and the batch sizes."""
    dataflow.reset_state()
    items, sizes = [], []
    for images, labels in dataflow:
        assert images.dtype == np.uint8 and labels.dtype == np.int32
        items += [(int(label), image.tobytes()) for image, label in zip(images, labels)]
        sizes.append(len(labels))
    return items, sizes


@pytest.fixture
def sample_copy(sample_dirs, tmp_path):
    """A copy of the flat sample that a test may damage."""
    return shutil.copytree(sample_dirs['flat'], str(tmp_path / 'data'))


def test_sample_layout_and_metadata(sample_dirs):
    flat, sub = sample_dirs['flat'], sample_dirs['subfolders']
    synsets = read_synsets(meta(flat))
    assert len(synsets) == 1000 and synsets[:2] == ['n00000000', 'n00000001']
    train = read_split_list(meta(flat), 'train')
    assert train[0] == ('n00000000/n00000000_0.JPEG', 0)
    assert all(os.path.isfile(os.path.join(flat, 'train', name)) for name, _ in train)
    val = read_split_list(meta(flat), 'val')
    assert val == read_split_list(meta(sub), 'val')
    assert len(val) == SAMPLE['num_classes'] * SAMPLE['val_per_class']
    assert val[0][0] == 'ILSVRC2012_val_00000001.JPEG'
    assert os.path.isfile(os.path.join(flat, 'val', val[0][0]))
    assert os.path.isfile(os.path.join(sub, 'val', synsets[val[0][1]], val[0][0]))
    with open(os.path.join(meta(flat), 'synset_words.txt')) as f:
        assert len(f.readlines()) == 1000


def test_sample_classes_are_distinct(tmp_path):
    """Nearest class-mean colour already separates the classes: a tiny CNN can learn them."""
    root = write_sample_dataset(str(tmp_path / 'd'), num_classes=10, train_per_class=8,
                                val_per_class=4, image_size=40)

    def features(split):
        pairs = read_split_list(meta(root), split)
        folder = os.path.join(root, split)
        x = np.array([decode_image(os.path.join(folder, name)).mean((0, 1)) for name, _ in pairs])
        return x, np.array([label for _, label in pairs])
    train_x, train_y = features('train')
    val_x, val_y = features('val')
    means = np.array([train_x[train_y == c].mean(0) for c in range(10)])
    predicted = np.argmin(((val_x[:, None] - means[None]) ** 2).sum(-1), 1)
    assert (predicted == val_y).mean() >= 0.9


def test_val_layouts_give_same_examples(sample_dirs):
    flat = list_val_images(sample_dirs['flat'], meta(sample_dirs['flat']))
    sub = list_val_images(sample_dirs['subfolders'], meta(sample_dirs['subfolders']))
    assert [label for _, label in flat] == [label for _, label in sub]
    assert [os.path.basename(p) for p, _ in flat] == [os.path.basename(p) for p, _ in sub]
    for (flat_path, _), (sub_path, _) in zip(flat, sub):
        assert decode_image(flat_path).tobytes() == decode_image(sub_path).tobytes()


def test_decode_cmyk_grayscale_and_png_named_jpeg(tmp_path):
    Image = pytest.importorskip('PIL.Image')
    rng = np.random.default_rng(0)
    cmyk = tmp_path / 'cmyk.JPEG'
    Image.fromarray(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8), 'CMYK').save(cmyk, quality=95)
    assert Image.open(cmyk).mode == 'CMYK'
    decoded = decode_image(str(cmyk))
    assert decoded.shape == (30, 40, 3) and decoded.dtype == np.uint8
    expected = np.asarray(Image.open(cmyk).convert('RGB'))[..., ::-1].astype(int)
    assert np.abs(decoded.astype(int) - expected).mean() < 3

    gray = tmp_path / 'gray.JPEG'
    cv2.imwrite(str(gray), rng.integers(0, 256, (20, 24), dtype=np.uint8))
    decoded = decode_image(str(gray))
    assert decoded.shape == (20, 24, 3) and decoded.dtype == np.uint8
    assert (decoded[..., 0] == decoded[..., 1]).all() and (decoded[..., 1] == decoded[..., 2]).all()

    png = tmp_path / 'png.JPEG'
    bgr = rng.integers(0, 256, (16, 18, 3), dtype=np.uint8)
    png.write_bytes(cv2.imencode('.png', bgr)[1].tobytes())
    assert (decode_image(str(png)) == bgr).all()


@pytest.mark.parametrize('content', [b'', b'not an image at all', None])
def test_decode_failure_names_the_file(tmp_path, content):
    path = tmp_path / 'bad.JPEG'
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match='bad.JPEG'):
        decode_image(str(path))


def test_decode_truncated_jpeg_names_the_file(tmp_path):
    path = tmp_path / 'cut.JPEG'
    path.write_bytes(cv2.imencode('.jpg', np.zeros((40, 40, 3), np.uint8))[1].tobytes()[:200])
    with pytest.raises(DataError, match='cut.JPEG'):
        decode_image(str(path))


@pytest.mark.parametrize('size,short_edge', [(32, 36), (224, 256), (160, 182)])
def test_eval_augmentor_resizes_shorter_edge_then_center_crops(size, short_edge):
    image = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    long_edge = int(short_edge * 400 / 300 + 0.5)
    resized = cv2.resize(image, (long_edge, short_edge), interpolation=cv2.INTER_CUBIC)
    top, left = (short_edge - size) // 2, (long_edge - size) // 2
    expected = resized[top:top + size, left:left + size]
    assert (eval_augmentor(size).augment(image) == expected).all()
    assert eval_augmentor(size).augment(image.transpose(1, 0, 2)).shape == (size, size, 3)


def test_dataflow_does_not_depend_on_workers(sample_dirs):
    examples = list_val_images(sample_dirs['flat'], meta(sample_dirs['flat']))
    one, sizes = collect(get_val_dataflow(examples, 5, 32, workers=1))
    three, _ = collect(get_val_dataflow(examples, 5, 32, workers=3))
    assert one == three and len(one) == len(examples)
    assert sizes == [5, 5, 2]
    assert [label for label, _ in one] == [label for _, label in examples]


def mapped_in_time(dataflow, seconds):
    """[index] of every datapoint of one pass of an [index, image] `dataflow`, or as many as came in `seconds`."""
    dataflow.reset_state()
    mapped = []
    reader = threading.Thread(target=lambda: mapped.extend(int(index) for index, _ in dataflow), daemon=True)
    reader.start()
    reader.join(seconds)    # left waiting on failure: a daemon thread, the workers die with the process
    return mapped


def test_small_fast_passes_lose_no_datapoint():
    """Passes whose whole buffer is sent as the workers start, mapped in microseconds: the first worker to connect
    could be sent most of it, and its socket dropped the replies past the 2 x buffer / num_proc that tensorpack
    let it queue, so that the pass waited forever (1 to 15 passes in, before the fix)."""
    def to_image(datapoint):
        return [datapoint[0], np.full((32, 32, 3), datapoint[0], np.uint8)]
    for workers in [1, 3] * 30:
        dataflow = OrderedWatchedMapData(DataFromList([[k] for k in range(12)], shuffle=False), workers, to_image,
                                         buffer_size=12)
        assert mapped_in_time(dataflow, 10) == list(range(12)), '{} workers'.format(workers)


def test_dataflow_stops_at_an_undecodable_image(sample_copy):
    examples = list_val_images(sample_copy, meta(sample_copy))
    with open(examples[4][0], 'wb') as f:
        f.write(b'garbage')
    with pytest.raises(DataError, match=os.path.basename(examples[4][0]) + '.*--skip_bad_images'):
        collect(get_val_dataflow(examples, 5, 32, workers=2))


def test_dataflow_skips_undecodable_images_into_a_list(sample_copy):
    examples = list_val_images(sample_copy, meta(sample_copy))
    for path, _ in examples[2:4]:
        open(path, 'wb').close()
    bad_images = []
    items, _ = collect(get_val_dataflow(examples, 5, 32, workers=2, bad_images=bad_images))
    assert len(items) == len(examples) - 2
    assert sorted(bad_images) == sorted(path for path, _ in examples[2:4])


def test_missing_val_files_are_counted_and_named(sample_copy):
    names = sorted(os.listdir(os.path.join(sample_copy, 'val')))
    for name in names[:7]:
        os.remove(os.path.join(sample_copy, 'val', name))
    with pytest.raises(DataError) as error:
        list_val_images(sample_copy, meta(sample_copy))
    message = str(error.value)
    assert message.startswith('7 of the images listed in ' + os.path.join(meta(sample_copy), 'val.txt'))
    assert all(name in message for name in names[:5]) and names[5] not in message


def test_data_dir_errors(tmp_path, sample_copy):
    with pytest.raises(DataError, match='--data_dir {} does not exist'.format(tmp_path / 'nowhere')):
        list_val_images(str(tmp_path / 'nowhere'), meta(sample_copy))
    shutil.rmtree(os.path.join(sample_copy, 'val'))
    with pytest.raises(DataError, match='{} not found'.format(os.path.join(sample_copy, 'val'))):
        list_val_images(sample_copy, meta(sample_copy))


def test_metadata_errors(tmp_path, sample_copy):
    with pytest.raises(DataError, match='{} does not exist.*--meta_dir'.format(tmp_path / 'meta')):
        read_synsets(str(tmp_path / 'meta'))
    val_txt = os.path.join(meta(sample_copy), 'val.txt')
    with open(val_txt, 'a') as f:
        f.write('ILSVRC2012_val_00000001.JPEG 1000\n')
    with pytest.raises(DataError, match='label 1000 .* out of range for the 1000 classes'):
        list_val_images(sample_copy, meta(sample_copy))
    with open(val_txt, 'a') as f:
        f.write('just-a-name\n')
    with pytest.raises(DataError, match='val.txt, line {}'.format(len(open(val_txt).readlines()))):
        read_split_list(meta(sample_copy), 'val')
    os.remove(os.path.join(meta(sample_copy), 'synsets.txt'))
    with pytest.raises(DataError, match='synsets.txt: No such file'):
        read_synsets(meta(sample_copy))


def worker_niceness(_):
    return os.getpriority(os.PRIO_PROCESS, 0)


def test_evaluation_decodes_at_a_lower_cpu_priority_and_training_at_its_own():
    own = os.getpriority(os.PRIO_PROCESS, 0)
    if own >= 10:
        pytest.skip('this process runs at nice {}: no lower priority to check'.format(own))
    examples = DataFromList([[index] for index in range(4)], shuffle=False)
    for dataflow, expected in ((OrderedWatchedMapData(examples, 2, worker_niceness, buffer_size=4), own + 10),
                               (WatchedMapData(examples, 2, worker_niceness, buffer_size=4), own)):
        dataflow.reset_state()
        assert set(itertools.islice(dataflow, 4)) == {expected}   # training's dataflow never ends
