"""scikit-learn's digits (1,797 handwritten 8x8 images, 10 classes) as a small real data set: upscaled to
BGR uint8 images, written in class folders, and a network trained on them in this process."""
import math
import os

import cv2
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits
from tensorpack.tfutils.tower import TowerContext

tfv1 = tf.compat.v1

CLASSES = 10


def digit_images(size):
    """(BGR uint8 images [N, size, size, 3], int32 labels [N]): gray digits, upscaled bilinearly."""
    digits = load_digits()
    gray = [cv2.resize((image * (255 / 16)).astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
            for image in digits.images]
    return np.repeat(np.stack(gray)[..., np.newaxis], 3, -1), digits.target.astype(np.int32)


def as_evaluated(model, images):
    """BGR `images` as the model's evaluation (and export) preprocesses an image file."""
    augmentor = model.file_augmentor()
    return np.stack([augmentor.augment(image) for image in images])


def split(images, labels, held_back, seed=0):
    """((training images, labels), (held-back images, labels)): a random `held_back` of them apart."""
    order = np.random.RandomState(seed).permutation(len(images))
    return (images[order[held_back:]], labels[order[held_back:]]), (images[order[:held_back]], labels[order[:held_back]])


def write_class_folders(directory, images, labels):
    """PNG files in `directory`/<label>/, one per image; returns `directory`."""
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = os.path.join(directory, str(label))
        os.makedirs(folder, exist_ok=True)
        cv2.imwrite(os.path.join(folder, '{:04d}.png'.format(index)), image)
    return directory


def train(model, images, labels, prefix, steps, batch=64, lr=0.1, seed=0):
    """`model` trained from scratch by SGD with a cosine learning rate on BGR `images`, batch norm's
    statistics updated as tensorpack's trainers do; its checkpoint saved at `prefix` and returned."""
    rng = np.random.RandomState(seed)
    with tf.Graph().as_default():
        tfv1.set_random_seed(seed)
        image = tfv1.placeholder(tf.float32, [None, model.image_shape, model.image_shape, 3], 'input')
        label = tfv1.placeholder(tf.int32, [None], 'label')
        with TowerContext('', is_training=True):
            cost = model.build_graph(image, label)
        step = tfv1.placeholder(tf.float32, [])
        optimizer = tfv1.train.MomentumOptimizer(lr * 0.5 * (1 + tf.cos(math.pi * step / steps)), 0.9)
        with tf.control_dependencies(tfv1.get_collection(tfv1.GraphKeys.UPDATE_OPS)):
            train_op = optimizer.minimize(cost)
        with tfv1.Session() as sess:
            sess.run(tfv1.global_variables_initializer())
            for number in range(steps):
                chosen = rng.choice(len(images), batch, replace=False)
                sess.run(train_op, {image: images[chosen].astype(np.float32), label: labels[chosen], step: number})
            return tfv1.train.Saver().save(sess, prefix, write_meta_graph=False)
