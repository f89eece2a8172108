"""main.py's replicated multi-tower training (SyncMultiGPUTrainerReplicated) on two logical CPU devices.

    python tests/train_cpu_towers.py OUT.npz MAIN_FLAGS...

Trains without validation (as on a Horovod rank other than 0). Writes every variable (tower 1's
are local variables under `tower1/`) after the last step of the first epoch (before the end-of-epoch copy
of tower 0's variables to the others) to OUT.npz, plus `initial/<name>` right after initialization.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import compat  # noqa: E402,F401  (before TensorFlow)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorpack import Callback, launch_train_with_config  # noqa: E402

import main  # noqa: E402
from callbacks import StopOnNonFiniteLoss  # noqa: E402
from preemption import StopRequest  # noqa: E402

TOWERS = 2


class DumpVariables(Callback):
    """Every variable after initialization and after the first epoch's steps, into one .npz."""

    def __init__(self, path):
        self.path = path

    def _values(self):
        variables = tf.compat.v1.global_variables() + tf.compat.v1.local_variables()
        return {v.op.name: value for v, value in zip(variables, self.trainer.sess.run(variables))}

    def _before_train(self):
        self._initial = self._values()

    def _after_epoch(self):
        if self.epoch_num == 1:
            values = self._values()
            values.update({'initial/' + name: value for name, value in self._initial.items()})
            np.savez(self.path, **values)


if __name__ == '__main__':
    out, argv = sys.argv[1], sys.argv[2:]
    cpu, = tf.config.list_physical_devices('CPU')
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * TOWERS)
    assert len(tf.config.list_logical_devices('CPU')) == TOWERS
    args = main.parse_args(argv)
    trainer = main.get_trainer(args, TOWERS)
    main.set_logdir(args, is_chief=True)
    config = main.get_config(args, TOWERS, 1, False, StopOnNonFiniteLoss(), StopRequest())
    config.callbacks.append(DumpVariables(out))
    launch_train_with_config(config, trainer)
