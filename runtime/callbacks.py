"""Training callbacks: the learning-rate schedules, the NaN stop, the bad-image log, where a run resumes, the
epoch's summaries."""
import math
import time

import compat  # noqa: F401  (must come before TensorFlow)
import numpy as np
import tensorflow as tf
from tensorpack.callbacks import Callback, HyperParamSetter, InferenceRunner
from tensorpack.train import StopTraining
from tensorpack.utils import logger
from tensorpack.utils.utils import get_tqdm

from runtime import tensorpack_internals as internals
from runtime.staged_input import StagedBatches

tfv1 = tf.compat.v1


class BadImageLog(Callback):
    """Counts and names the training images that could not be decoded; logs them every epoch.

    Validation's undecodable images, which its dataflow appends to `validation_names`, are named
    at the end of each validation (the callback comes after the validation in the list).
    """

    def __init__(self):
        self.names = []
        self.validation_names = []
        self._logged = 0

    def filter(self, datapoint):
        """The datapoint, or None (logged) for the [path, -1] that a worker sends for a bad image."""
        if datapoint[1] >= 0:
            return datapoint
        logger.warn('Skipped a training image that could not be decoded: {}'.format(datapoint[0]))
        self.names.append(datapoint[0])
        return None

    def _trigger_epoch(self):
        self.trainer.monitors.put_scalar('bad_images', len(self.names) - self._logged)
        self._logged = len(self.names)
        if self.validation_names:
            logger.warn('Validation skipped {} images that could not be decoded: {}'.format(
                len(self.validation_names), ', '.join(sorted(self.validation_names))))
            del self.validation_names[:]


class StepwiseSchedule(HyperParamSetter):
    """The learning rate set at every step to `value_at(global step)`: linear warm-up to `base_lr`, then
    what the subclass's `decayed(step)` says."""

    def __init__(self, base_lr, warmup_steps):
        super().__init__('learning_rate')
        self.base_lr, self.warmup_steps = base_lr, warmup_steps

    def value_at(self, step):
        if step < self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        return self.decayed(step)

    def decayed(self, step):
        raise NotImplementedError()

    def _get_value_to_set(self):
        return self.value_at(self.global_step)

    def _trigger_step(self):
        self._set_param()


class WarmupCosineSchedule(StepwiseSchedule):
    """Warm-up, then cosine decay to zero at `total_steps`."""

    def __init__(self, base_lr, warmup_steps, total_steps):
        super().__init__(base_lr, warmup_steps)
        self.total_steps = total_steps

    def decayed(self, step):
        progress = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.)
        return 0.5 * self.base_lr * (1 + math.cos(math.pi * progress))


class WarmupStepSchedule(StepwiseSchedule):
    """Warm-up, then `base_lr` divided by 10 at each of the global steps `boundaries`."""

    def __init__(self, base_lr, warmup_steps, boundaries):
        super().__init__(base_lr, warmup_steps)
        self.boundaries = boundaries

    def decayed(self, step):
        return self.base_lr * 0.1 ** sum(step >= boundary for boundary in self.boundaries)


class WarmupExponentialSchedule(StepwiseSchedule):
    """Warm-up, then `base_lr` times `rate` for every `decay_steps` steps since the start (timm's step
    scheduler, the warm-up's steps counted, as GhostNetV2's recipe runs it)."""

    def __init__(self, base_lr, warmup_steps, decay_steps, rate):
        super().__init__(base_lr, warmup_steps)
        self.decay_steps, self.rate = decay_steps, rate

    def decayed(self, step):
        return self.base_lr * self.rate ** (step // self.decay_steps)


class SummariesOfTheLastStep(Callback):
    """tensorpack's default summaries (those of the epoch's last step), fetched at every step and kept at the
    last: tensorpack fetches them with the last step alone, and a step that fetches more than the others is a
    run signature of its own, which TensorFlow optimizes anew (grappler: 3-8 s on the Ghost networks'
    training graphs, once per process). Merging a few scalars costs a step nothing measurable."""

    def _setup_graph(self):
        summaries = tfv1.summary.merge_all()
        self.fetches = None if summaries is None else tfv1.train.SessionRunArgs(summaries)

    def _before_run(self, _):
        return self.fetches

    def _after_run(self, _, run_values):
        if run_values.results is not None and self.local_step == self.trainer.steps_per_epoch - 1:
            self.trainer.monitors.put_summary(run_values.results)


class StopOnNonFiniteLoss(Callback):
    """Stops training at the first step whose total cost is NaN or infinite, before any later checkpoint."""

    _chief_only = False
    bad_step = None

    def _setup_graph(self):
        self._cost = self.get_tensors_maybe_in_tower(['cost:0'])[0]

    def _before_run(self, ctx):
        return tfv1.train.SessionRunArgs(fetches=self._cost)

    def _after_run(self, ctx, run_values):
        cost = run_values.results
        if not np.isfinite(cost):
            self.bad_step = self.global_step
            raise StopTraining('the total cost is {} at global step {}'.format(cost, self.global_step))


class Validation(InferenceRunner):
    """An InferenceRunner on one tower fed as evaluation is (runtime.staged_input: decoded batches wait in a
    queue inside the graph), that runs until its dataflow ends (skipped images may leave fewer batches than its
    length), records how long the pass took (`validation_seconds`), and gives up between two batches, without
    statistics, once `should_stop()` is true (a signal or a dead data worker: training then saves and stops)."""

    def __init__(self, dataflow, inferencers, should_stop):
        self.staged = StagedBatches(dataflow)
        super().__init__(self.staged, inferencers)
        self.dataflow, self.inferencers, self.should_stop = dataflow, inferencers, should_stop

    def _setup_graph(self):
        super()._setup_graph()
        self.dataflow.reset_state()     # its workers start now; every pass iterates it anew

    def _trigger(self):
        for inferencer in self.inferencers:
            inferencer.before_epoch()
        start, done = time.perf_counter(), 0
        self.staged.start_pass(self.trainer.sess)
        with get_tqdm(total=self.staged.size(), desc='Validation', unit='batch') as bar:
            while not self.should_stop() and self.staged.take_batch():
                internals.run_inference_step(self)
                done += 1
                bar.update()
        if self.should_stop():
            self.staged.stop(self.trainer.sess)
            logger.warn('Validation given up after {} of {} batches: training is stopping.'.format(
                done, self.staged.size()))
            return
        self.staged.end_pass()
        self.trainer.monitors.put_scalar('validation_seconds', time.perf_counter() - start)
        for inferencer in self.inferencers:
            inferencer.trigger_epoch()


class ResumeAtGlobalStep(Callback):
    """Starts the loop where the global step is: its epoch, and in it the steps not yet run.

    A checkpoint saved on a stop may be mid-epoch: the first epoch then runs only its remaining
    steps, and the run still ends at global step epochs x steps per epoch. Under Horovod the global
    step is the one rank 0 broadcast: the other ranks may not see rank 0's --logdir (another
    machine), and an epoch read there could differ from rank 0's.
    """
    _chief_only = False

    def _before_train(self):
        loop = self.trainer.loop   # restored, or broadcast by HorovodTrainer.initialize, by now
        self._steps_per_epoch = loop.steps_per_epoch
        loop.config(loop.steps_per_epoch, self.global_step // loop.steps_per_epoch + 1, loop.max_epoch)
        self._steps_done = self.global_step % loop.steps_per_epoch
        if self._steps_done:
            logger.info('Resuming epoch {} after its step {} of {}.'.format(
                loop.starting_epoch, self._steps_done, self._steps_per_epoch))

    def _before_epoch(self):
        self.trainer.loop.steps_per_epoch = self._steps_per_epoch - self._steps_done

    def _after_epoch(self):
        self.trainer.loop.steps_per_epoch = self._steps_per_epoch
        self._steps_done = 0
