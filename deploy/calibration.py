"""Which images calibrate an int8 file and which are held back to check it: drawn across class folders.

Sorted file names put a folder's images together (the first 200 of ImageNet's train/ are all tench), so
the images are taken in turns from each folder, each folder's in a seeded random order. An image's class
is its folder's rank among the sorted class folders (ImageNet's wnids sort as synsets.txt lists them;
folders named by numbers sort as numbers); images outside class folders have none.
"""
import collections
import os
import re

import numpy as np

from imagenet_utils import DataError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
CALIBRATION_LIMIT = 200   # images fed to the int8 calibration at most
HELD_BACK_LIMIT = 1000    # held-back images the quantized file is checked on at most
SEED = 0


def image_files(directory):
    """Image files (by extension) under `directory`, recursively, sorted."""
    found = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names
             if name.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
        raise DataError('{}: no image files ({}) in it or below'.format(
            directory, ', '.join(IMAGE_EXTENSIONS)))
    return sorted(found)


def natural_key(name):
    """Sorts 'class2' before 'class10'."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)]


def across_folders(paths, seed=SEED):
    """`paths` in turns from each folder (one of each, then the next of each, ...), each folder's shuffled."""
    by_folder = collections.defaultdict(list)
    for path in paths:
        by_folder[os.path.dirname(path)].append(path)
    rng = np.random.RandomState(seed)
    queues = [list(rng.permutation(by_folder[folder])) for folder in sorted(by_folder)]
    return [str(queue[turn]) for turn in range(max(map(len, queues))) for queue in queues if turn < len(queue)]


def labelled(paths, directory, num_classes):
    """(paths, labels or None): labels when every image sits in a class folder directly under
    `directory` and there are `num_classes` such folders."""
    folders = [os.path.relpath(os.path.dirname(path), directory) for path in paths]
    if any(folder in ('.', '') or os.sep in folder for folder in folders):
        return paths, None
    classes = sorted(set(folders), key=natural_key)
    if len(classes) != num_classes:
        return paths, None
    rank = {name: index for index, name in enumerate(classes)}
    return paths, np.array([rank[folder] for folder in folders], np.int32)


def calibration_and_held_back(representative, validate, num_classes, calibrate=True):
    """(calibration paths, (held-back paths, their labels or None)).

    Calibration: up to CALIBRATION_LIMIT images of `representative` across its folders (none when not
    `calibrate`), at most half of them when `validate` is None, for the rest is held back. Held back:
    up to HELD_BACK_LIMIT images of `validate`, else of the rest of `representative`.
    """
    ordered = across_folders(image_files(representative)) if representative else []
    calibration = []
    if calibrate:
        calibration = ordered[:CALIBRATION_LIMIT if validate else min(CALIBRATION_LIMIT, len(ordered) // 2)]
    source, rest = (validate, across_folders(image_files(validate))) if validate else \
        (representative, ordered[len(calibration):])
    if not rest:
        raise DataError('--representative {}: too few images to hold some back from calibration; '
                        'give --validate DIR'.format(representative))
    return calibration, labelled(rest[:HELD_BACK_LIMIT], source, num_classes)
