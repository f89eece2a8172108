"""Data worker processes that die with the process that started them, and whose death is noticed."""
import ctypes
import functools
import os
import signal

from tensorpack.callbacks import Callback
from tensorpack.dataflow import ProxyDataFlow
from tensorpack.dataflow.base import DataFlowTerminated
from tensorpack.utils import logger

from runtime.tensorpack_internals import HookedMapDataZMQ

PR_SET_PDEATHSIG = 1        # from <linux/prctl.h>
# the parent's SIGTERM handler (preemption) and TensorFlow's crash handler, which turns a segfault into SIGABRT
INHERITED_HANDLERS_RESET = (signal.SIGTERM, signal.SIGSEGV)
POLL_MS = 1000              # how often a waiting consumer checks that the workers are alive


class WorkerDied(Exception):
    """A data worker process ended while its dataflow was in use; the message says how."""


def die_with_parent(parent_pid):
    """Have the kernel SIGKILL this process when its parent ends, however the parent ends (Linux).

    The parent here is the thread that forked: tensorpack starts the workers from the main thread.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), 'prctl(PR_SET_PDEATHSIG) failed')
    if os.getppid() != parent_pid:     # the parent ended before prctl took effect
        os._exit(1)


def death_cause(exitcode):
    """'was killed by SIGKILL' or 'exited with status 1' for a multiprocessing exit code."""
    if exitcode < 0:
        return 'was killed by {}'.format(signal.Signals(-exitcode).name)
    return 'exited with status {}'.format(exitcode)


class WatchedMapData(HookedMapDataZMQ):
    """MultiProcessMapDataZMQ whose workers die with this process and whose death is reported.

    Each worker gets PR_SET_PDEATHSIG, the default SIGTERM and SIGSEGV actions (not the handlers
    inherited from the parent by fork) and `niceness` added to its nice value. When a worker has
    ended, iterating calls `on_worker_death(message)` and raises DataFlowTerminated (which ends
    tensorpack's input thread quietly); without `on_worker_death` it raises WorkerDied.
    """

    on_worker_death = None
    kind = 'data worker'     # how messages name the workers
    niceness = 0             # added to the workers' nice value
    parent_pid = None

    def reset_state(self):
        self.parent_pid = os.getpid()
        super().reset_state()
        logger.info('Started {} {}s: pids {}.'.format(len(self.worker_processes), self.kind,
                                                      ', '.join(str(proc.pid) for proc in self.worker_processes)))

    def prepare_worker(self):
        for signum in INHERITED_HANDLERS_RESET:
            signal.signal(signum, signal.SIG_DFL)
        die_with_parent(self.parent_pid)
        os.nice(self.niceness)

    def before_receive(self):
        self._check_workers()
        while not self.data_ready(POLL_MS):
            self._check_workers()

    def dead_worker(self):
        """'data worker 2 of 8 (pid N) was killed by SIGSEGV' when a worker has ended, else None."""
        procs = self.worker_processes
        for number, proc in enumerate(procs):
            if proc.exitcode is not None:
                return '{} {} of {} (pid {}) {}'.format(self.kind, number + 1, len(procs), proc.pid,
                                                        death_cause(proc.exitcode))
        return None

    def _check_workers(self):
        if self.receiving_closed:     # being cleaned up: tensorpack ends the workers
            raise DataFlowTerminated()
        message = self.dead_worker()
        if message:
            self._report(message)

    def _report(self, message):
        if self.on_worker_death is None:
            raise WorkerDied(message)
        logger.error(message)
        self.on_worker_death(message)
        raise DataFlowTerminated(message)


class Numbered(ProxyDataFlow):
    """[index, datapoint] for each datapoint of `ds`, the index counting from 0 in every pass."""

    def __iter__(self):
        for index, datapoint in enumerate(self.ds):
            yield [index, datapoint]


def numbered_call(map_func, numbered):
    """[index, map_func(datapoint)] for a Numbered [index, datapoint]."""
    return [numbered[0], map_func(numbered[1])]


class OrderedWatchedMapData(WatchedMapData):
    """WatchedMapData that maps every datapoint of `ds` exactly once per pass and yields them in the order
    of `ds` (evaluation: the same batches whatever the number of workers)."""

    kind = 'validation data worker'
    # a lower CPU priority than the model's process: the model, which bounds evaluation on a CPU, takes
    # the cores whenever it can use them and decoding fills the gaps (--eval end to end about 1.05x on
    # 2 cores; nice 19 did no better, and would leave decoding little against other busy processes)
    niceness = 10

    def __init__(self, ds, num_proc, map_func, buffer_size):
        super().__init__(Numbered(ds), num_proc, functools.partial(numbered_call, map_func),
                         buffer_size=min(buffer_size, len(ds)), strict=True)

    def __iter__(self):
        arrived, next_index = {}, 0     # at most buffer_size datapoints wait here for an earlier one
        for index, datapoint in super().__iter__():
            arrived[index] = datapoint
            while next_index in arrived:
                yield arrived.pop(next_index)
                next_index += 1


def watched_dataflows(dataflow):
    """The WatchedMapData in a chain of proxy dataflows."""
    while dataflow is not None:
        if isinstance(dataflow, WatchedMapData):
            yield dataflow
        dataflow = getattr(dataflow, 'ds', None)


def watch_workers(dataflow, on_worker_death):
    """Have every WatchedMapData in a chain of proxy dataflows call `on_worker_death(message)`."""
    for watched in watched_dataflows(dataflow):
        watched.on_worker_death = on_worker_death


class WatchIdleWorkers(Callback):
    """After every training step, calls `on_worker_death(message)` once when a worker of `dataflow` has
    ended: the workers of a dataflow read only now and then (validation) are otherwise checked only then."""

    def __init__(self, dataflow, on_worker_death):
        self.watched = list(watched_dataflows(dataflow))
        self.on_worker_death = on_worker_death
        self._reported = False

    def _trigger_step(self):
        messages = [m for m in (watched.dead_worker() for watched in self.watched) if m]
        if messages and not self._reported:
            self._reported = True
            logger.error(messages[0])
            self.on_worker_death(messages[0])
