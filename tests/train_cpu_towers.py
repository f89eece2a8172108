"""main.py's replicated multi-tower training (SyncMultiGPUTrainerReplicated) on two logical CPU devices.

    python tests/train_cpu_towers.py OUT.npz MAIN_FLAGS...

Trains without validation (as on a Horovod rank other than 0). tensorpack places tower k (its ops,
variables, all-reduce share and update) on /gpu:k; here that placement is moved to the logical device
/cpu:k. Writes every variable (tower 1's are local variables under `tower1/`) after the last step of the
first epoch (before the end-of-epoch copy of tower 0's variables to the others) to OUT.npz, plus
`initial/<name>` right after initialization and `ran_on/<device>`: the ops the first step ran there.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import compat  # noqa: E402,F401  (before TensorFlow)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorpack import Callback, launch_train_with_config  # noqa: E402
from tensorpack.tfutils import get_default_sess_config  # noqa: E402

import main  # noqa: E402
from runtime.callbacks import StopOnNonFiniteLoss  # noqa: E402
from runtime.preemption import StopRequest  # noqa: E402
from runtime.session import InitializedSession  # noqa: E402

TOWERS = 2


def device_name(device):
    """'CPU:1' for '/job:localhost/replica:0/task:0/device:CPU:1'."""
    spec = tf.DeviceSpec.from_string(device)
    return '{}:{}'.format(spec.device_type, spec.device_index)


class TowersOnCPUDevices(Callback):
    """Moves every op tensorpack placed on /gpu:k to /cpu:k; records where the first step's ops ran."""

    ran_on = None

    def _setup_graph(self):
        for op in tf.compat.v1.get_default_graph().get_operations():
            device = tf.DeviceSpec.from_string(op.device)
            if device.device_type == 'GPU':
                op._set_device(device.replace(device_type='CPU'))   # no public API moves a built op

    def _before_run(self, ctx):
        if self.ran_on is None:
            return tf.compat.v1.train.SessionRunArgs(fetches=[], options=tf.compat.v1.RunOptions(
                trace_level=tf.compat.v1.RunOptions.FULL_TRACE))
        return None

    def _after_run(self, ctx, run_values):
        if self.ran_on is None:
            self.ran_on = {device_name(stats.device): [node.node_name for node in stats.node_stats]
                           for stats in run_values.run_metadata.step_stats.dev_stats}


class DumpVariables(Callback):
    """Every variable after initialization and after the first epoch's steps, into one .npz."""

    def __init__(self, path, placement):
        self.path = path
        self.placement = placement

    def _values(self):
        variables = tf.compat.v1.global_variables() + tf.compat.v1.local_variables()
        return {v.op.name: value for v, value in zip(variables, self.trainer.sess.run(variables))}

    def _before_train(self):
        self._initial = self._values()

    def _after_epoch(self):
        if self.epoch_num == 1:
            values = self._values()
            values.update({'initial/' + name: value for name, value in self._initial.items()})
            values.update({'ran_on/' + device: np.array(ops) for device, ops in self.placement.ran_on.items()})
            np.savez(self.path, **values)


if __name__ == '__main__':
    out, argv = sys.argv[1], sys.argv[2:]
    args = main.parse_args(argv)
    trainer = main.get_trainer(args, TOWERS)
    main.set_logdir(args, is_chief=True)
    config = main.get_config(args, TOWERS, 1, False, StopOnNonFiniteLoss(), StopRequest())
    session_config = get_default_sess_config()
    session_config.device_count['CPU'] = TOWERS     # the session's devices /cpu:0 and /cpu:1
    session_config.inter_op_parallelism_threads = 8   # with 2 (the cores) the towers' staging ops deadlock
    config.session_creator = InitializedSession(config=session_config)
    placement = TowersOnCPUDevices()
    config.callbacks += [placement, DumpVariables(out, placement)]
    launch_train_with_config(config, trainer)
