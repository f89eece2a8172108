"""CIFAR-10 in its python format (cifar-10-batches-py/), read safely, and its dataflows.

The batch files are pickles, and a pickle can run code when it is loaded: they are read by an
unpickler that builds nothing but dicts, lists, strings, numbers and numpy arrays. Nothing is
ever downloaded. Images reach the model as BGR, like OpenCV's, so every network takes the same input.
"""
import glob
import io
import os
import pickle
import re

import cv2
import compat  # noqa: F401  (must come before TensorFlow)
import numpy as np
from tensorpack.dataflow import AugmentImageComponent, BatchData, DataFromList, imgaug

from imagenet_utils import DataError

IMAGE_SIZE = 32
PAD = 4                              # training: pad 4, random 32x32 crop, horizontal flip
MEAN_RGB = (0.4914, 0.4822, 0.4465)  # per channel, of the CIFAR-10 training images
STD_RGB = (0.2470, 0.2435, 0.2616)
FOLDER = 'cifar-10-batches-py'
# What a CIFAR batch file may reference besides plain containers: numpy's array reconstruction, and
# the string encoder that Python 3 writes bytes with in protocol 2 (pure functions, no side effects).
ALLOWED_GLOBALS = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
                   ('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode')}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers, numbers, strings and numpy arrays; refuses any other global."""

    def find_class(self, module, name):
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError('it references {}.{}, which a CIFAR batch file never does'.format(
            module, name))


def load_pickle(path):
    """A CIFAR pickle as a dict with str keys; DataError naming the file if it is anything else."""
    try:
        with open(path, 'rb') as f:
            content = RestrictedUnpickler(io.BytesIO(f.read()), encoding='bytes').load()
    except OSError as e:
        raise DataError('{}: can not be read: {}'.format(path, e.strerror)) from None
    except Exception as e:  # a crafted or damaged pickle can fail in many ways; all mean the same
        raise DataError('{}: not a CIFAR python batch file (refused: {})'.format(path, e)) from None
    if not isinstance(content, dict):
        raise DataError('{}: not a CIFAR python batch file (a {}, not a dict)'.format(path, type(content).__name__))
    return {key.decode('latin1') if isinstance(key, bytes) else key: value for key, value in content.items()}


def batches_dir(data_dir):
    """DATA_DIR/cifar-10-batches-py, or DATA_DIR itself when it holds batches.meta."""
    for path in (os.path.join(data_dir, FOLDER), data_dir):
        if os.path.isfile(os.path.join(path, 'batches.meta')):
            return path
    raise DataError('--data_dir {}: no {}/batches.meta in it or below it: it must be the folder that '
                    'cifar-10-python.tar.gz extracts ({}/, holding data_batch_1..5, test_batch, '
                    'batches.meta) or the folder holding it; nothing is downloaded'.format(
                        data_dir, FOLDER, FOLDER))


def class_names(data_dir):
    """The class names of `batches.meta`, in label order."""
    path = os.path.join(batches_dir(data_dir), 'batches.meta')
    names = load_pickle(path).get('label_names')
    if not isinstance(names, list) or not names:
        raise DataError('{}: has no label_names list'.format(path))
    try:
        return [name.decode('utf-8') if isinstance(name, bytes) else str(name) for name in names]
    except UnicodeDecodeError:
        raise DataError('{}: its label_names are not UTF-8 text'.format(path)) from None


def read_batch(path, num_classes):
    """(BGR uint8 images [N, 32, 32, 3], int32 labels [N]) of one batch file, checked."""
    batch = load_pickle(path)
    data, labels = batch.get('data'), batch.get('labels')
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or \
            data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE:
        raise DataError('{}: `data` must be a uint8 array [N, {}], got {}'.format(
            path, 3 * IMAGE_SIZE * IMAGE_SIZE, _describe(data)))
    label_array = integer_array(labels)
    if label_array is None:
        raise DataError('{}: `labels` must be a list of integers, got {}'.format(path, _describe(labels)))
    if len(label_array) != len(data):
        raise DataError('{}: {} images in `data` but {} `labels`'.format(path, len(data), len(label_array)))
    out_of_range = np.flatnonzero((label_array < 0) | (label_array >= num_classes))
    if len(out_of_range):
        raise DataError('{}: label {} (image {}) is out of range for the {} classes of batches.meta'.format(
            path, label_array[out_of_range[0]], out_of_range[0], num_classes))
    rgb = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(rgb[..., ::-1]), label_array.astype(np.int32)


def integer_array(values):
    """A list of ints or a 1-D integer array as a 1-D integer array; None for anything else.

    A list's elements are checked before any array is built from it: in a pickle, a few shared
    references can stand for nested lists far too large to build.
    """
    if isinstance(values, list) and all(type(value) is int for value in values):
        values = np.asarray(values)    # an object array when an int does not fit 64 bits
    if not isinstance(values, np.ndarray) or values.ndim != 1 or (
            len(values) and not np.issubdtype(values.dtype, np.integer)):
        return None
    return values


def _describe(value):
    if isinstance(value, np.ndarray):
        return '{} {}'.format(value.dtype, list(value.shape))
    return type(value).__name__


def read_split(data_dir, split):
    """(images, labels, class names) of 'train' (data_batch_*) or 'test' (test_batch)."""
    folder = batches_dir(data_dir)
    names = class_names(data_dir)
    paths = sorted(glob.glob(os.path.join(folder, 'data_batch_*')),
                   key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', p)])
    if split == 'test':
        paths = [os.path.join(folder, 'test_batch')]
    if not paths or not all(os.path.isfile(p) for p in paths):
        raise DataError('{}: no {} in it'.format(folder, 'test_batch' if split == 'test' else 'data_batch_* file'))
    batches = [read_batch(path, len(names)) for path in paths]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]), names


def train_augmentor():
    """Pad 4 pixels (zeros), a random 32x32 crop, a horizontal flip."""
    return [imgaug.CenterPaste((IMAGE_SIZE + 2 * PAD, IMAGE_SIZE + 2 * PAD)),
            imgaug.RandomCrop((IMAGE_SIZE, IMAGE_SIZE)),
            imgaug.Flip(horiz=True)]


def file_augmentor(image_size=IMAGE_SIZE):
    """An image file to the network's input: resized to S x S (a CIFAR image is a whole picture)."""
    return imgaug.AugmentorList([imgaug.Resize((image_size, image_size), interp=cv2.INTER_AREA)])


def get_train_dataflow(images, labels, batch_size):
    """Shuffled, augmented batches [BGR uint8 images, int32 labels] of the training images."""
    df = DataFromList(list(zip(images, labels)), shuffle=True)
    df = AugmentImageComponent(df, train_augmentor(), copy=False)
    return BatchData(df, batch_size, remainder=False)


def get_eval_dataflow(images, labels, batch_size):
    """Batches [BGR uint8 images, int32 labels] in file order, the last one smaller."""
    return BatchData(DataFromList(list(zip(images, labels)), shuffle=False), batch_size, remainder=True)
