"""Inference input staged inside the graph: while a tower runs one batch, the next ones already wait in a queue."""
import threading

import compat  # noqa: F401  (must come before TensorFlow)
import tensorflow as tf
from tensorpack.input_source import FeedfreeInput

tfv1 = tf.compat.v1
QUEUE_BATCHES = 3   # decoded batches waiting in the graph: enough for every tower to find one when it is done


class StagedBatches(FeedfreeInput):
    """Batches [uint8 images, labels] of a dataflow, put into a FIFO queue inside the graph by a thread of their
    own, so that a tower that finishes a batch finds the next one there instead of waiting for Python to receive,
    stack and feed it.

    Every `get_input_tensors()` (one per tower, under the tower's device) takes batches from the queue on its own
    and casts the images to the model's input type on that device (a quarter of the bytes cross to a GPU).
    A pass (`start_pass`) feeds the dataflow once; a tower runs a batch after `take_batch()` said one waits for
    it, and stops when it says the pass has no more. An exception from the dataflow ends the pass early;
    `end_pass` raises it. The owner of the dataflow calls its `reset_state` before the first pass.
    """

    def __init__(self, dataflow, capacity=QUEUE_BATCHES):
        self.dataflow = dataflow
        self.capacity = capacity
        self._fed = threading.Condition()
        self._batches_fed = self._batches_taken = 0
        self._feeding = self._stopped = False
        self._thread = None
        self._failure = None

    def _size(self):
        return len(self.dataflow)

    def _setup(self, input_signature):
        image_spec, label_spec = input_signature
        self._image_dtype = image_spec.dtype
        with self.cached_name_scope():
            self._images = tfv1.placeholder(tf.uint8, image_spec.shape, 'images')
            self._labels = tfv1.placeholder(label_spec.dtype, label_spec.shape, 'labels')
            self._queue = tfv1.FIFOQueue(self.capacity, [tf.uint8, label_spec.dtype], name='batches')
            self._enqueue = self._queue.enqueue([self._images, self._labels])
            self._close = self._queue.close(cancel_pending_enqueues=True)

    def _get_input_tensors(self):
        with tf.device('/cpu:0'), self.cached_name_scope():
            images, labels = self._queue.dequeue()
        images.set_shape(self._images.shape)
        labels.set_shape(self._labels.shape)
        return [tf.cast(images, self._image_dtype), labels]

    def start_pass(self, session):
        """Start feeding one pass of the dataflow into the queue, in `session`."""
        self._failure = None
        self._batches_fed = self._batches_taken = 0
        self._feeding = True
        self._thread = threading.Thread(target=self._feed, args=(session,), name='StagedBatches', daemon=True)
        self._thread.start()

    def take_batch(self):
        """True once a batch waits in the queue for the tower that asks (it then runs one); False when the pass
        has no more."""
        with self._fed:
            self._fed.wait_for(lambda: self._stopped or self._batches_fed > self._batches_taken or not self._feeding)
            if self._batches_fed > self._batches_taken and not self._stopped:
                self._batches_taken += 1
                return True
            return False

    def end_pass(self):
        """Wait for the pass's feeding to end; raise the exception the dataflow raised, if it did."""
        self._thread.join()
        if self._failure is not None:
            raise self._failure

    def stop(self, session):
        """End the feeding for good (the queue closes); `take_batch` then says there is no more."""
        with self._fed:
            self._stopped = True
            self._fed.notify_all()
        session.run(self._close)
        self._thread.join()

    def _feed(self, session):
        try:
            self._failure = self._put_batches(session)
        except tf.errors.CancelledError:    # stopped: nobody waits for the rest
            pass
        finally:
            with self._fed:
                self._feeding = False
                self._fed.notify_all()

    def _put_batches(self, session):
        """Put the dataflow's batches into the queue; the exception the dataflow raised, or None."""
        batches = iter(self.dataflow)
        while True:
            try:
                images, labels = next(batches)
            except StopIteration:
                return None
            except Exception as e:  # noqa: BLE001  (handed to the thread that ends the pass)
                return e
            session.run(self._enqueue, {self._images: images, self._labels: labels})
            with self._fed:
                self._batches_fed += 1
                self._fed.notify_all()
