"""A small sample in the ImageNet layout with caffe metadata, learnable by a tiny CNN (demo, tests).

Class i (wnid n00000000 + i) has its own hue and stripe orientation; saturation, brightness,
stripe period and phase, size, aspect ratio and noise vary from image to image.
"""
import os
import struct

import cv2
import numpy as np

GOLDEN_RATIO_CONJUGATE = 0.6180339887
DEMO_DIR = './demo_data'
# --demo trains briefly on its small sample: defaults that flags given on the command line override. The
# learning rate is the recipe's (0.1 per 256 images): 0.4 learnt the sample as well but drove the logits
# to the hundreds (about 90 at width 1, in training and inference mode alike), which no real run shows
DEMO_DEFAULTS = dict(image_size=64, batch=32, epochs=10, lr=0.1, warmup_epochs=1)


def wnid(index):
    """The fake wnid of class `index`: n00000000, n00000001, ..."""
    return 'n{:08d}'.format(index)


def sample_image(rng, class_index, num_classes, image_size):
    """A BGR uint8 image of class `class_index`: its hue, stripes at its angle, plus noise."""
    height, width = rng.integers(image_size * 3 // 4, image_size * 5 // 4 + 1, size=2)
    angle = np.pi * ((class_index * GOLDEN_RATIO_CONJUGATE) % 1.0)
    period = rng.uniform(0.15, 0.3) * min(height, width)
    y, x = np.mgrid[:height, :width]
    phase = 2 * np.pi * ((x * np.cos(angle) + y * np.sin(angle)) / period) + rng.uniform(0, 2 * np.pi)
    stripes = np.sin(phase) > 0
    hsv = np.empty((height, width, 3), np.float32)
    hsv[..., 0] = 180.0 * class_index / num_classes
    hsv[..., 1] = rng.uniform(150, 255)
    hsv[..., 2] = np.where(stripes, rng.uniform(190, 255), rng.uniform(60, 110))
    bgr = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    bgr += rng.normal(0, 12, bgr.shape)
    return np.clip(bgr, 0, 255).astype(np.uint8)


def write_sample_dataset(root, num_classes=10, train_per_class=20, val_per_class=10, image_size=64,
                         val_layout='flat', metadata_classes=None, seed=0):
    """Write JPEGs under `root/{train,val}` and metadata under `root/caffe_ilsvrc12`; return `root`.

    `metadata_classes` (default `num_classes`) classes are listed in synsets.txt; the first
    `num_classes` of them have images. `val_layout` is 'flat' (val/ILSVRC2012_val_*.JPEG) or
    'subfolders' (val/<wnid>/...). The same seed gives the same images in either layout.
    """
    if val_layout not in ('flat', 'subfolders'):
        raise ValueError("val_layout must be 'flat' or 'subfolders', got {!r}".format(val_layout))
    metadata_classes = metadata_classes or num_classes
    if metadata_classes < num_classes:
        raise ValueError('metadata_classes ({}) < num_classes ({})'.format(metadata_classes, num_classes))
    rng = np.random.default_rng(seed)
    train_list = []
    for label in range(num_classes):
        for i in range(train_per_class):
            name = '{0}/{0}_{1}.JPEG'.format(wnid(label), i)
            _write_jpeg(os.path.join(root, 'train', name), sample_image(rng, label, num_classes, image_size))
            train_list.append((name, label))
    val_labels = rng.permutation(np.repeat(np.arange(num_classes), val_per_class))
    val_list = []
    for number, label in enumerate(val_labels, start=1):
        name = 'ILSVRC2012_val_{:08d}.JPEG'.format(number)
        folder = wnid(label) if val_layout == 'subfolders' else ''
        _write_jpeg(os.path.join(root, 'val', folder, name),
                    sample_image(rng, label, num_classes, image_size))
        val_list.append((name, label))
    _write_metadata(os.path.join(root, 'caffe_ilsvrc12'), metadata_classes, train_list, val_list)
    return root


def _write_jpeg(path, image):
    """Write `image` as a JPEG file at `path`, creating its directory."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, 90]):
        raise OSError('could not write {}'.format(path))


def _write_metadata(meta_dir, metadata_classes, train_list, val_list):
    """The caffe_ilsvrc12 files: synsets.txt, synset_words.txt, train.txt, val.txt."""
    os.makedirs(meta_dir, exist_ok=True)
    files = {
        'synsets.txt': [wnid(i) for i in range(metadata_classes)],
        'synset_words.txt': ['{} sample class {}'.format(wnid(i), i) for i in range(metadata_classes)],
        'train.txt': ['{} {}'.format(name, label) for name, label in train_list],
        'val.txt': ['{} {}'.format(name, label) for name, label in val_list],
    }
    for name, lines in files.items():
        with open(os.path.join(meta_dir, name), 'w') as f:
            f.write(''.join(line + '\n' for line in lines))


def write_cifar_sample(root, num_classes=10, train_per_class=50, test_per_class=20, per_batch_file=300,
                       seed=0):
    """Write `root/cifar-10-batches-py` in the official python format (Python 2 pickles read with
    encoding='bytes'): data_batch_1.. of `per_batch_file` images, test_batch, batches.meta; return `root`."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, 'cifar-10-batches-py')
    os.makedirs(folder, exist_ok=True)
    train = rng.permutation(np.repeat(np.arange(num_classes), train_per_class))
    batches = [train[start:start + per_batch_file] for start in range(0, len(train), per_batch_file)]
    for number, labels in enumerate(batches, start=1):
        _write_cifar_batch(os.path.join(folder, 'data_batch_{}'.format(number)), rng, labels, num_classes,
                           'training batch {} of {}'.format(number, len(batches)))
    test = rng.permutation(np.repeat(np.arange(num_classes), test_per_class))
    _write_cifar_batch(os.path.join(folder, 'test_batch'), rng, test, num_classes, 'testing batch 1 of 1')
    meta = {b'label_names': [b'class%d' % i for i in range(num_classes)], b'num_cases_per_batch': per_batch_file,
            b'num_vis': 3072}
    with open(os.path.join(folder, 'batches.meta'), 'wb') as f:
        f.write(python2_pickle(meta))
    return root


def _write_cifar_batch(path, rng, labels, num_classes, batch_label):
    """One batch file: `data` rows are the red, green and blue 32x32 planes of each sample image."""
    images = [cv2.resize(sample_image(rng, label, num_classes, 32), (32, 32), interpolation=cv2.INTER_AREA)
              for label in labels]
    data = np.stack([image[..., ::-1].transpose(2, 0, 1).reshape(-1) for image in images])
    batch = {b'batch_label': batch_label.encode(), b'labels': [int(label) for label in labels], b'data': data,
             b'filenames': [b'sample_%05d.png' % i for i in range(len(labels))]}
    with open(path, 'wb') as f:
        f.write(python2_pickle(batch))


def python2_pickle(value):
    """`value` (dicts, lists, bytes, ints, uint8 arrays) pickled as the official files are: Python 2's
    protocol 2, bytes as Python 2 strings, arrays by `numpy.core.multiarray._reconstruct`."""
    return b'\x80\x02' + _python2_opcodes(value) + b'.'


def _python2_opcodes(value):
    if isinstance(value, dict):   # EMPTY_DICT, MARK, key value ..., SETITEMS
        return b'}(' + b''.join(_python2_opcodes(k) + _python2_opcodes(v) for k, v in value.items()) + b'u'
    if isinstance(value, list):   # EMPTY_LIST, MARK, item ..., APPENDS
        return b'](' + b''.join(_python2_opcodes(item) for item in value) + b'e'
    if isinstance(value, bytes):  # SHORT_BINSTRING or BINSTRING
        if len(value) < 256:
            return b'U' + bytes([len(value)]) + value
        return b'T' + struct.pack('<i', len(value)) + value
    if isinstance(value, int):    # BININT
        return b'J' + struct.pack('<i', value)
    assert value.dtype == np.uint8, value.dtype
    # _reconstruct(ndarray, (0,), 'b'), then its state (1, shape, dtype('u1'), False, raw bytes): BUILD
    dtype = (b'cnumpy\ndtype\n' + _python2_opcodes(b'u1') + b'K\x00K\x01\x87R'
             b'(K\x03' + _python2_opcodes(b'|') + b'NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb')
    shape = b'(' + b''.join(_python2_opcodes(int(n)) for n in value.shape) + b't'
    return (b'cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85' + _python2_opcodes(b'b') +
            b'\x87R(K\x01' + shape + dtype + b'\x89' + _python2_opcodes(value.tobytes()) + b'tb')
