"""Data worker processes that die with the process that started them, and whose death is noticed."""
import ctypes
import os
import signal

import zmq
from tensorpack.dataflow import MultiProcessMapDataZMQ
from tensorpack.dataflow.base import DataFlowTerminated
from tensorpack.utils import logger

PR_SET_PDEATHSIG = 1        # from <linux/prctl.h>
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


class WatchedMapData(MultiProcessMapDataZMQ):
    """MultiProcessMapDataZMQ whose workers die with this process and whose death is reported.

    Each worker gets PR_SET_PDEATHSIG and the default SIGTERM action (not a handler inherited
    from the parent by fork). When a worker has ended, iterating calls `on_worker_death(message)`
    and raises DataFlowTerminated (which ends tensorpack's input thread quietly); without
    `on_worker_death` it raises WorkerDied.
    """

    class _Worker(MultiProcessMapDataZMQ._Worker):
        def __init__(self, parent_pid, *args):
            super().__init__(*args)
            self.parent_pid = parent_pid

        def run(self):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            die_with_parent(self.parent_pid)
            super().run()

    on_worker_death = None

    def _create_worker(self, id, pipename, hwm):
        return WatchedMapData._Worker(os.getpid(), id, self.map_func, pipename, hwm)

    def _recv(self):
        self._check_workers()
        while not self.socket.poll(POLL_MS, zmq.POLLIN):
            self._check_workers()
        return super()._recv()

    def _check_workers(self):
        if self.socket.closed:     # being cleaned up: tensorpack ends the workers
            raise DataFlowTerminated()
        for number, proc in enumerate(self._procs):
            if proc.exitcode is not None:
                self._report('data worker {} of {} (pid {}) {}'.format(
                    number + 1, len(self._procs), proc.pid, death_cause(proc.exitcode)))

    def _report(self, message):
        if self.on_worker_death is None:
            raise WorkerDied(message)
        logger.error(message)
        self.on_worker_death(message)
        raise DataFlowTerminated(message)


def watch_workers(dataflow, on_worker_death):
    """Have every WatchedMapData in a chain of proxy dataflows call `on_worker_death(message)`."""
    while dataflow is not None:
        if isinstance(dataflow, WatchedMapData):
            dataflow.on_worker_death = on_worker_death
        dataflow = getattr(dataflow, 'ds', None)
