"""Every use of tensorpack 0.11's private API, in one place, behind public names.

The rest of the code uses tensorpack's public API and the documented extension points of its base
classes (a Callback's `_setup_graph`, `_trigger_epoch`, ...; a SessionInit's `_setup_graph` and
`_run_init`). What it needs beyond that is here, and `PRIVATE_NAMES` lists it: a tensorpack upgrade
that renames or drops one of them fails tests/test_tensorpack_internals.py by that name, instead of
breaking a data worker or a validation silently.
"""
import zmq
from tensorpack.callbacks import InferenceRunner
from tensorpack.dataflow import MultiProcessMapDataZMQ

# (owner, name, how it is used): class attributes are looked up, instance attributes found in the
# owner's source as `self.<name> =`
PRIVATE_NAMES = (
    (MultiProcessMapDataZMQ, '_Worker', 'class attribute: the worker process class, subclassed'),
    (MultiProcessMapDataZMQ, '_create_worker', 'class attribute: overridden to start our worker class'),
    (MultiProcessMapDataZMQ, '_recv', 'class attribute: overridden to watch the workers while waiting'),
    (MultiProcessMapDataZMQ, '_procs', 'instance attribute: the worker processes'),
    (MultiProcessMapDataZMQ, 'socket', 'instance attribute: the socket the mapped datapoints arrive on'),
    (MultiProcessMapDataZMQ, 'context', 'instance attribute: the ZMQ context of that socket'),
    (MultiProcessMapDataZMQ, '_reset_done', 'instance attribute: whether the workers were started'),
    (InferenceRunner, '_hooked_sess', 'instance attribute: the session that runs one batch'),
)

UNBOUNDED_QUEUE = 0   # ZMQ's high-water mark for no limit


class HookedMapDataZMQ(MultiProcessMapDataZMQ):
    """MultiProcessMapDataZMQ with public hooks: `prepare_worker()` runs in every worker process before
    it maps anything, `before_receive()` before each wait for a mapped datapoint.

    Every worker's socket queues without a bound (the consumer bounds the datapoints in flight, to
    buffer_size + 1). tensorpack gave each a high-water mark of 2 x buffer_size / num_proc, and a REP socket
    drops the replies past its mark (counted against its peer's acknowledgements, which come in batches):
    a worker sent most of the buffer (the first to connect, as the buffer is filled when the workers start)
    lost some when it mapped quickly, and the pass waited for them forever (tests/test_data.py, 3 workers).
    """

    class _Worker(MultiProcessMapDataZMQ._Worker):
        def __init__(self, prepare, *args):
            super().__init__(*args)
            self.prepare = prepare

        def run(self):
            self.prepare()
            super().run()

    def reset_state(self):
        super().reset_state()
        for proc in self.worker_processes:   # forked: this process's objects of them need not keep the dataflow
            proc.prepare = None              # alive (it ends its workers when it is collected)

    def prepare_worker(self):
        """Runs in each worker process, before its first datapoint."""

    def before_receive(self):
        """Runs before each wait for a mapped datapoint."""

    def _create_worker(self, id, pipename, hwm):
        return HookedMapDataZMQ._Worker(self.prepare_worker, id, self.map_func, pipename, UNBOUNDED_QUEUE)

    def _recv(self):
        self.before_receive()
        return super()._recv()

    def __del__(self):
        """tensorpack's clean-up (close the socket, end the workers) without the line it prints on stdout,
        which holds a run's results alone."""
        try:
            if not self._reset_done:
                return
            if not self.context.closed:
                self.socket.close(0)
                self.context.destroy(0)
            for process in self._procs:
                process.terminate()
                process.join(5)
        except Exception:    # noqa: BLE001  (as tensorpack's: an object half made, or the interpreter ending)
            pass

    @property
    def worker_processes(self):
        """The worker processes (none before `reset_state`)."""
        return getattr(self, '_procs', [])

    @property
    def receiving_closed(self):
        """Whether the dataflow is being cleaned up (tensorpack then ends the workers)."""
        return self.socket.closed

    def data_ready(self, timeout_ms):
        """Whether a mapped datapoint arrives within `timeout_ms`."""
        return bool(self.socket.poll(timeout_ms, zmq.POLLIN))


def run_inference_step(runner):
    """Run one batch of an InferenceRunner's input through its tower, its inferencers and their hooks."""
    runner._hooked_sess.run(fetches=[])
