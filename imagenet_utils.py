"""ImageNet for tensorpack: the model base class (preprocessing, loss, errors), data and evaluation."""
import collections
import concurrent.futures
import functools
import os
import threading
import time

import compat  # noqa: F401  (must come before TensorFlow)
import cv2
import numpy as np
import tensorflow as tf
from tensorpack import ModelDesc
from tensorpack.dataflow import BatchData, DataFromList, MapData, imgaug
from tensorpack.models import regularize_cost
from tensorpack.tfutils import get_default_sess_config
from tensorpack.tfutils.summary import add_moving_summary
from tensorpack.tfutils.tower import PredictTowerContext, TowerFunc, get_current_tower_context
from tensorpack.utils.utils import get_tqdm

from runtime.staged_input import StagedBatches
from runtime.workers import OrderedWatchedMapData, WatchedMapData, WorkerDied

tfv1 = tf.compat.v1

# ImageNet statistics in RGB order; applied in the channel order of the network's first conv.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
EVAL_BATCH = 256     # evaluation's default total batch
RMSPROP_DECAY, RMSPROP_EPSILON = 0.9, 1e-3   # --optimizer rmsprop: GhostNetV2's recipe (timm's RMSpropTF)


def in_order(values_rgb, order):
    """Per-channel values given in RGB, in channel `order` ('RGB' or 'BGR')."""
    return tuple(values_rgb) if order == 'RGB' else tuple(values_rgb[::-1])


class ImageNetModel(ModelDesc):
    """A classifier on BGR uint8-range images; subclasses define `get_logits`, `scope` and `classifier_bias`.

    Its variables live under `scope`, the classifier's under `scope/Logits` (fine-tuning skips them when
    the number of classes differs); `scope/classifier_bias` has one value per class. Its first conv takes
    the image's channels in `channel_order` ('BGR' as OpenCV decodes, or 'RGB'), normalized by `mean_rgb`
    and `std_rgb`.
    """

    scope = None
    classifier_bias = None
    image_shape = 224
    min_image_size = 1
    mean_rgb, std_rgb = IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
    channel_order = 'BGR'
    data_format = 'NHWC'
    num_classes = 1000
    weight_decay = 4e-5
    weight_decay_pattern = '/W'   # kernels; not the cheap ops' `DW`, biases or batch norm
    label_smoothing = 0.1
    optimizer_name = 'sgd'
    momentum = 0.9
    nesterov = True

    @property
    def classifier_scope(self):
        return self.scope + '/Logits'

    def inputs(self):
        return [tf.TensorSpec([None, self.image_shape, self.image_shape, 3], tf.float32, 'input'),
                tf.TensorSpec([None], tf.int32, 'label')]

    def build_graph(self, image, label):
        if get_current_tower_context().is_training:
            logits = self.get_logits(self.image_preprocess(image))
        else:
            logits = self.logits_folding_preprocessing(image, 'BGR')
        logits = tf.identity(logits, name='logits')
        tf.nn.softmax(logits, name='prob')
        loss = self.classification_loss(logits, label)
        self.classification_errors(logits, label)
        wd_cost = regularize_cost(self.weight_decay_pattern,
                                  lambda w: self.weight_decay * tf.nn.l2_loss(w), name='wd_cost')
        total_cost = tf.add_n([loss, wd_cost], name='cost')
        add_moving_summary(loss, wd_cost, total_cost)
        return total_cost

    def file_augmentor(self):
        """An image file (decoded BGR) to the network's input size, as evaluation preprocesses it."""
        return eval_augmentor(self.image_shape)

    def get_logits(self, image):
        """The network: a preprocessed image in `self.data_format` to [batch, num_classes] logits."""
        raise NotImplementedError()

    def image_preprocess(self, image):
        """[0, 255] BGR NHWC to normalized `self.channel_order` in `self.data_format`."""
        with tf.name_scope('image_preprocess'):
            if self.channel_order == 'RGB':
                image = tf.reverse(image, [3])
            mean = tf.constant(in_order(self.mean_rgb, self.channel_order), tf.float32)
            std = tf.constant(in_order(self.std_rgb, self.channel_order), tf.float32)
            image = (image * (1.0 / 255) - mean) / std
            if self.data_format in ('NCHW', 'channels_first'):
                image = tf.transpose(image, [0, 3, 1, 2])
            return image

    def logits_folding_preprocessing(self, images, order):
        """`get_logits(image_preprocess(...))` of [0, 255] images in channel `order` ('RGB' or 'BGR') with
        the scaling and channel order folded into the first conv's kernel, as inference runs it: only the
        mean is subtracted from the images, and zero padding is the same."""
        folded = []

        def stem_folding_getter(getter, name, *args, **kwargs):
            variable = getter(name, *args, **kwargs)
            if folded or variable.shape.rank != 4 or variable.shape[2] != 3:
                return variable
            folded.append(name)
            return self.stem_kernel(variable, order)
        with tfv1.variable_scope(tfv1.get_variable_scope(), custom_getter=stem_folding_getter):
            logits = self.get_logits(self.centered(images, order))
        if not folded:
            raise ValueError('{} has no conv on the 3 image channels to fold preprocessing into'.format(
                type(self).__name__))
        return logits

    def centered(self, images, order):
        """[0, 255] images in channel `order` less 255 x the mean, in `self.data_format`. The mean is
        subtracted from each row of W x 3 values (LiteRT's XNNPACK broadcasts over an innermost 3 slowly)."""
        mean = [255 * m for m in in_order(self.mean_rgb, order)]
        height, width, channels = images.shape[1:]
        with tf.name_scope('centered_' + order.lower()):
            rows = tf.reshape(tf.cast(images, tf.float32), [-1, height, width * channels])
            image = tf.reshape(rows - tf.constant(mean * width, tf.float32), [-1, height, width, channels])
            if self.data_format in ('NCHW', 'channels_first'):
                image = tf.transpose(image, [0, 3, 1, 2])
            return image

    def stem_kernel(self, kernel, order):
        """The first conv's kernel [k, k, 3, C] for `centered` input: its rows (in `self.channel_order`) in
        `order`, over 255 x std."""
        if order != self.channel_order:
            kernel = tf.reverse(kernel, [2])
        std = in_order(self.std_rgb, order)
        return kernel / tf.constant([[[[255 * s] for s in std]]], tf.float32)

    def classification_loss(self, logits, label):
        """Mean cross-entropy against labels smoothed by `self.label_smoothing`."""
        smoothed = (tf.one_hot(label, self.num_classes) * (1 - self.label_smoothing)
                    + self.label_smoothing / self.num_classes)
        loss = tf.nn.softmax_cross_entropy_with_logits(labels=smoothed, logits=logits)
        return tf.reduce_mean(loss, name='xentropy-loss')

    @staticmethod
    def classification_errors(logits, label):
        """Per-image `wrong-top1` and `wrong-top5` (1.0 where the label is not in the top k)."""
        for k in (1, 5):
            hit = tf.nn.in_top_k(targets=label, predictions=logits, k=k)
            wrong = tf.cast(tf.logical_not(hit), tf.float32, name='wrong-top{}'.format(k))
            add_moving_summary(tf.reduce_mean(wrong, name='train-error-top{}'.format(k)))

    def optimizer(self):
        lr = tfv1.get_variable('learning_rate', initializer=0.1, trainable=False)
        tfv1.summary.scalar('learning_rate-summary', lr)
        if self.optimizer_name == 'rmsprop':   # epsilon inside the square root, as timm's RMSpropTF
            return tfv1.train.RMSPropOptimizer(lr, RMSPROP_DECAY, self.momentum, RMSPROP_EPSILON)
        return tfv1.train.MomentumOptimizer(lr, self.momentum, use_nesterov=self.nesterov)


# ---------------------------------------------------------------------------------------------
# ImageNet data in the caffe_ilsvrc12 layout, and evaluation.

class DataError(Exception):
    """Input data that can not be used as given; the message names the path and the fix."""


def read_synsets(meta_dir):
    """The wnids of `synsets.txt` in class order (1000 for ImageNet)."""
    path = os.path.join(meta_dir, 'synsets.txt')
    if not os.path.isdir(meta_dir):
        raise DataError('{} does not exist: it should hold the caffe ilsvrc12 metadata (synsets.txt, '
                        'val.txt, ...; http://dl.caffe.berkeleyvision.org/caffe_ilsvrc12.tar.gz); '
                        'put it there or set --meta_dir'.format(meta_dir))
    synsets = [line.strip() for line in _read_lines(path) if line.strip()]
    if not synsets:
        raise DataError('{} lists no classes (one wnid per line expected)'.format(path))
    return synsets


def read_split_list(meta_dir, split):
    """The (relative path, label) pairs of `train.txt` or `val.txt`, in file order."""
    path = os.path.join(meta_dir, split + '.txt')
    examples = []
    for number, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise DataError('{}, line {}: expected "<relative path> <label>", got {!r}'.format(
                path, number, line.rstrip('\n')))
        examples.append((fields[0], int(fields[1])))
    return examples


def _read_lines(path):
    """The lines of a metadata file; DataError naming it when it is missing."""
    try:
        with open(path) as f:
            return f.readlines()
    except OSError as e:
        raise DataError('{}: {} (caffe ilsvrc12 metadata expected; set --meta_dir to its '
                        'directory)'.format(path, e.strerror)) from None


def split_dir(data_dir, split):
    """DATA_DIR/train or DATA_DIR/val; DataError saying what is missing."""
    if not os.path.isdir(data_dir):
        raise DataError('--data_dir {} does not exist: it must be the ImageNet directory holding '
                        'train/ and val/'.format(data_dir))
    path = os.path.join(data_dir, split)
    if not os.path.isdir(path):
        raise DataError('{} not found: --data_dir must be the ImageNet directory holding {}/{}'.format(
            path, split, ', flat or in per-class subfolders' if split == 'val' else ' with <wnid>/ folders'))
    return path


def list_train_images(data_dir, meta_dir):
    """(image path, label) for every line of `train.txt`; files that turn out unreadable are skipped later."""
    train_dir = split_dir(data_dir, 'train')
    num_classes = len(read_synsets(meta_dir))
    examples = [(os.path.join(train_dir, name), label) for name, label in read_split_list(meta_dir, 'train')]
    out_of_range = [name for name, label in examples if label >= num_classes]
    if out_of_range:
        raise DataError('{}: {} labels are out of range for the {} classes of synsets.txt, e.g. {}'.format(
            os.path.join(meta_dir, 'train.txt'), len(out_of_range), num_classes, out_of_range[0]))
    if not examples:
        raise DataError('{} lists no images'.format(os.path.join(meta_dir, 'train.txt')))
    return examples


def list_val_images(data_dir, meta_dir, num_shown=5):
    """(image path, label) for every line of `val.txt`, found in `val/` flat or in `val/<wnid>/`."""
    val_dir = split_dir(data_dir, 'val')
    synsets = read_synsets(meta_dir)
    examples, absent = [], []
    for name, label in read_split_list(meta_dir, 'val'):
        if label >= len(synsets):
            raise DataError('{}: label {} of {} is out of range for the {} classes of {}'.format(
                os.path.join(meta_dir, 'val.txt'), label, name, len(synsets),
                os.path.join(meta_dir, 'synsets.txt')))
        flat = os.path.join(val_dir, name)
        in_class = os.path.join(val_dir, synsets[label], os.path.basename(name))
        path = flat if os.path.isfile(flat) else in_class
        if os.path.isfile(path):
            examples.append((path, label))
        else:
            absent.append(name)
    if absent:
        raise DataError('{} of the images listed in {} are not in {} (flat or under <wnid>/): {}{}'.format(
            len(absent), os.path.join(meta_dir, 'val.txt'), val_dir, ', '.join(absent[:num_shown]),
            ', ...' if len(absent) > num_shown else ''))
    if not examples:
        raise DataError('{} lists no images'.format(os.path.join(meta_dir, 'val.txt')))
    return examples


def decode_image(path):
    """The image file at `path` as BGR uint8 HxWx3 (CMYK, grayscale and PNG content included)."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as e:
        raise DataError('{}: can not be read: {}'.format(path, e.strerror)) from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError('{}: can not be decoded as an image'.format(path))
    return image


def eval_augmentor(image_size=224):
    """Shorter edge to int(S*256/224) with bicubic interpolation, then the center S x S crop."""
    return imgaug.AugmentorList([
        imgaug.ResizeShortestEdge(int(image_size * 256 / 224), cv2.INTER_CUBIC),
        imgaug.CenterCrop((image_size, image_size)),
    ])


def train_augmentor(image_size=224, min_crop_area=0.08):
    """As released: random-area crop resized to S x S, color jitter in random order, horizontal flip."""
    return imgaug.AugmentorList([
        imgaug.GoogleNetRandomCropAndResize(crop_area_fraction=(min_crop_area, 1.),
                                            target_shape=image_size),
        imgaug.RandomOrderAug([
            imgaug.BrightnessScale((0.6, 1.4), clip=False),
            imgaug.Contrast((0.6, 1.4), rgb=False, clip=False),
            imgaug.Saturation(0.4, rgb=False),
        ]),
        imgaug.Clip(),
        imgaug.Flip(horiz=True),
        imgaug.ToUint8(),
    ])


def _load_example(augmentor, example):
    """[augmented image, label], or [path, -1, why] when the image can not be read or decoded."""
    path, label = example
    try:
        image = decode_image(path)
    except DataError as e:
        return [path, np.int32(-1), str(e)]
    return [augmentor.augment(image), label]


def get_train_dataflow(examples, batch_size, bad_image_log, image_size=224, min_crop_area=0.08,
                       workers=None):
    """Shuffled, augmented batches decoded by `workers` processes; bad images go to `bad_image_log`.

    The processes die with this one; when one dies, iterating stops (workers.WatchedMapData).
    """
    examples = [(path, np.int32(label)) for path, label in examples]
    load = functools.partial(_load_example, train_augmentor(image_size, min_crop_area))
    df = WatchedMapData(DataFromList(examples, shuffle=True), workers or os.cpu_count() or 1,
                        load, buffer_size=max(2 * batch_size, 64))
    df = MapData(df, bad_image_log.filter)
    return BatchData(df, batch_size, remainder=False)


def _keep_decoded(bad_images, datapoint):
    """The datapoint; for an image that could not be decoded DataError, or None after adding its path to
    the list `bad_images`."""
    if datapoint[1] >= 0:
        return datapoint
    if bad_images is None:
        raise DataError('{} (--skip_bad_images skips such images)'.format(datapoint[2]))
    bad_images.append(datapoint[0])
    return None


def get_val_dataflow(examples, batch_size, image_size=224, workers=None, bad_images=None):
    """Batches [uint8 BGR images, int32 labels] of (path, label) `examples`, in order, decoded in parallel.

    `workers` processes decode and resize (default: the CPU count); the batches do not depend on
    them. The processes die with this one; when one dies, iterating raises WorkerDied (or calls the
    dataflow's `on_worker_death`: workers.watch_workers). Undecodable images raise DataError, or are
    skipped and their paths appended to `bad_images` when it is a list.
    """
    examples = [(path, np.int32(label)) for path, label in examples]
    load = functools.partial(_load_example, eval_augmentor(image_size))
    df = OrderedWatchedMapData(DataFromList(examples, shuffle=False), workers or os.cpu_count() or 1, load,
                               buffer_size=max(2 * batch_size, 64))
    df = MapData(df, functools.partial(_keep_decoded, bad_images))
    return BatchData(df, batch_size, remainder=True)


def tower_devices(num_towers, gpus):
    """One device per tower: the GPUs' when there are GPUs, else the CPU (one tower)."""
    return ['/gpu:{}'.format(k) for k in range(num_towers)] if gpus else ['/cpu:0']


def evaluation_session_config():
    """tensorpack's session defaults, but every core for one op (its default of 1 leaves a core idle when the
    network has no parallel branch to run)."""
    config = get_default_sess_config()
    config.intra_op_parallelism_threads = 0
    return config


class EvaluationResult(collections.namedtuple('EvaluationResult', 'top1 top5 images started seconds '
                                                                  'first_images first_seconds tower_batches')):
    """Top-1 and top-5 error over `images`, evaluated in `seconds` from `started` (time.perf_counter); the first
    batch of every tower (the graph's first run: optimization and kernel creation) took `first_seconds` for
    `first_images` of them; each tower ran its number of `tower_batches`."""

    @property
    def rate(self):
        """Images per second after the first batches, or None when there was nothing after them."""
        if self.images == self.first_images:
            return None
        return (self.images - self.first_images) / (self.seconds - self.first_seconds)


def evaluate(model, session_init, dataflow, devices=('/cpu:0',), session_config=None):
    """Top-1 and top-5 error of `model` on `dataflow` (batches [uint8 images, labels]): an EvaluationResult.

    One tower per device; the decoded batches wait in a queue inside the graph (runtime.staged_input), and each
    tower takes the next one as soon as it is done with its own.
    """
    with tf.Graph().as_default():
        staged = StagedBatches(dataflow)
        tower_errors = build_towers(model, staged, devices)
        session = tfv1.Session(config=session_config or evaluation_session_config())
        try:
            session.run([tfv1.global_variables_initializer(), tfv1.local_variables_initializer()])
            if session_init is not None:
                session_init.init(session)
            dataflow.reset_state()
            return run_towers(session, staged, tower_errors)
        finally:
            session.close()


def build_towers(model, staged, devices):
    """[wrong-top1, wrong-top5] of one inference tower of `model` per device, on batches of `staged`."""
    tower_func = TowerFunc(model.build_graph, model.get_input_signature())
    staged.setup(model.get_input_signature())
    errors = []
    for index, device in enumerate(devices):
        with tfv1.variable_scope(tfv1.get_variable_scope(), reuse=index > 0), tf.device(device), \
                PredictTowerContext('tower{}'.format(index) if len(devices) > 1 else ''):
            tower_func(*staged.get_input_tensors())
            errors.append(tower_func.towers[-1].get_tensors(['wrong-top1', 'wrong-top5']))
    return errors


def run_towers(session, staged, tower_errors):
    """Run every tower, each in a thread of its own, on the staged batches of one pass: an EvaluationResult."""
    with get_tqdm(total=staged.size(), desc='Evaluating', unit='batch') as bar, \
            concurrent.futures.ThreadPoolExecutor(len(tower_errors)) as pool:
        tally = Tally(len(tower_errors), bar)
        staged.start_pass(session)
        try:
            towers = [pool.submit(_run_tower, staged, session.make_callable(errors), tally, index)
                      for index, errors in enumerate(tower_errors)]
            for tower in towers:
                tower.result()
        finally:
            staged.stop(session)     # the pass is fed; or a tower failed, and the feeding stops
        try:
            staged.end_pass()
        except WorkerDied as e:
            raise DataError('evaluation stopped: {}'.format(e)) from None
    return tally.result()


def _run_tower(staged, run, tally, tower):
    """Run a tower (number `tower`) on the staged batches until the pass has no more; tally its errors."""
    while staged.take_batch():
        wrong1, wrong5 = run()
        tally.add(tower, wrong1.sum(), wrong5.sum(), len(wrong1))
    tally.add(tower, 0, 0, 0)     # none left (a tower that got no batch is past its first one too)


class Tally:
    """Errors and images of the towers' batches as they finish (counted on `bar`); the first batch of every
    tower apart."""

    def __init__(self, num_towers, bar):
        self.bar = bar
        self.lock = threading.Lock()
        self.start = time.perf_counter()
        self.totals = np.zeros(3)     # wrong top-1, wrong top-5, images
        self.tower_batches = [0] * num_towers
        self.towers_starting = set(range(num_towers))
        self.first_images, self.first_seconds = 0, None

    def add(self, tower, wrong1, wrong5, images):
        with self.lock:
            self.totals += (wrong1, wrong5, images)
            if images:
                self.tower_batches[tower] += 1
                self.bar.update()
            if self.towers_starting:
                self.towers_starting.discard(tower)
                if not self.towers_starting:
                    self.first_images, self.first_seconds = int(self.totals[2]), self.elapsed()

    def elapsed(self):
        return time.perf_counter() - self.start

    def result(self):
        wrong1, wrong5, images = self.totals
        if not images:
            raise DataError('no image could be evaluated')
        return EvaluationResult(float(wrong1 / images), float(wrong5 / images), int(images), self.start,
                                self.elapsed(), self.first_images, self.first_seconds, tuple(self.tower_batches))
