"""Stopping training cleanly: on SIGTERM/SIGINT or a dead data worker, save at the step reached, then stop."""
import contextlib
import signal

import compat  # noqa: F401  (must come before TensorFlow)
import tensorflow as tf
from tensorpack.callbacks import Callback
from tensorpack.train import StopTraining
from tensorpack.utils import logger

tfv1 = tf.compat.v1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Why training should stop: a signal's name or a data worker's failure; the first reason holds.

    The signal handler only records; `report()`, called from the training loop, logs what it recorded.
    """
    ANOTHER_RANK_SIGNALLED = "another rank's stop request"
    ANOTHER_RANK_FAILED = 'a data worker of another rank failed (that rank\'s log names it)'

    def __init__(self):
        self.signal_name = None
        self.failure = None
        self.saved = None     # the checkpoint saved on stopping
        self._received = []   # (signal name, whether it requested the stop), appended by the handler
        self._reported = 0

    @property
    def reason(self):
        if self.signal_name:
            return 'stopped by ' + self.signal_name
        return self.failure

    def fail(self, message):
        if not self.reason:
            self.failure = message

    def on_signal(self, signum, frame):
        """Records the signal and nothing more: no logging, no I/O, as the signal may have interrupted a
        write (the progress bar's) that a write here would re-enter. A signal after the stop request is
        ignored, and the stop signals then take their default action: another one ends the process."""
        name = signal.Signals(signum).name
        self._received.append((name, not self.reason))
        if self.reason:
            for stop_signal in STOP_SIGNALS:
                signal.signal(stop_signal, signal.SIG_DFL)
        else:
            self.signal_name = name

    def report(self):
        """Logs the signals received since the last report."""
        while self._reported < len(self._received):
            name, requested = self._received[self._reported]
            self._reported += 1
            if requested:
                logger.warn('{} received: saving a checkpoint at the step reached, then stopping'.format(name))
            else:
                logger.warn('{} received while stopping: ignored (the checkpoint is saved or being saved); '
                            'another SIGTERM or SIGINT ends the process at once'.format(name))

    def requested(self):
        """Whether training should stop, after reporting the signals received."""
        self.report()
        return bool(self.reason)

    def rank_counts(self):
        """[1 if a signal stopped this rank, 1 if its data worker failed]: summed over the ranks, whether
        any rank stops and why."""
        return [float(bool(self.signal_name)), float(bool(self.failure))]

    def follow_ranks(self, counts):
        """Takes the reason of the ranks' summed `rank_counts()` when this rank has none; whether to stop."""
        signalled, failed = counts
        if failed and not self.reason:
            self.failure = self.ANOTHER_RANK_FAILED
        elif signalled and not self.reason:
            self.signal_name = self.ANOTHER_RANK_SIGNALLED
        return bool(signalled or failed)


@contextlib.contextmanager
def signals_request_stop(stop_request):
    """Within the block, SIGTERM and SIGINT set `stop_request` instead of ending the process. Once a stop
    was requested they keep doing so after it: the process is then ending, and a second signal would cut
    short its cleanup and its exit status (a third ends it: see `StopRequest.on_signal`)."""
    previous = {signum: signal.signal(signum, stop_request.on_signal) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        if not stop_request.reason:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


class SaveAndStop(Callback):
    """After the first step that follows a stop request, saves a checkpoint (the chief) and stops.

    Under Horovod the ranks sum their `StopRequest.rank_counts()` at every step, so every rank stops
    after the same step, whichever rank got the signal or lost a data worker, and knows which of the
    two it was. When the input ended first (its workers died), the checkpoint is saved after
    training. The stop request's `saved` is then the checkpoint's path.
    """
    _chief_only = False
    _saved = False

    def __init__(self, stop_request, model_saver, horovod=False):
        self.stop_request = stop_request
        self.model_saver = model_saver
        self.horovod = horovod
        self._ranks_counts = [0., 0.]

    def _setup_graph(self):
        if self.horovod:
            hvd = self.trainer.hvd
            self._requested = tfv1.placeholder(tf.float32, [2], name='stop_requested')
            self._requests = hvd.allreduce(self._requested, op=hvd.Sum)

    def _before_run(self, ctx):
        if self.horovod:
            return tfv1.train.SessionRunArgs(fetches=self._requests, feed_dict={
                self._requested: self.stop_request.rank_counts()})
        return None

    def _after_run(self, ctx, run_values):
        if self.horovod:
            self._ranks_counts = run_values.results

    def _trigger_step(self):
        requested = self.stop_request.requested()     # this rank's, its signals logged
        if self.horovod:    # the ranks' summed requests, so that all stop after the same step
            requested = self.stop_request.follow_ranks(self._ranks_counts)
        if requested:
            self._save()
            raise StopTraining(self.stop_request.reason)

    def _after_train(self):
        if self.stop_request.requested() and not self._saved:
            self._save()

    def _save(self):
        self._saved = True
        if self.trainer.is_chief:
            logger.info('Saving a checkpoint at global step {} before stopping ...'.format(self.global_step))
            self.model_saver.trigger()
            self.stop_request.saved = tf.train.latest_checkpoint(self.model_saver.checkpoint_dir)
