"""main.py's training (the real GhostNet) under horovodrun; each rank saves its variables.

    horovodrun --gloo -np 2 -H localhost:2 python tests_horovod/train_ranks.py OUTDIR --horovod ...

The arguments after OUTDIR are main.py's flags. Each rank writes OUTDIR/rank{R}-init.npz (every
global variable right after HorovodTrainer's initial broadcast, before the first step) and
OUTDIR/rank{R}.npz (every global variable after training).

Test-only: `train_ranks.py OUTDIR --other_ranks_logdir DIR FLAGS...` gives every rank but 0 the
log directory DIR instead of --logdir, as a rank on another machine that cannot see rank 0's
--logdir would have (main.py is not changed by it; the rank comes from horovodrun's HOROVOD_RANK).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import compat  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS and the TF1 shims, before TensorFlow)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorpack import Callback  # noqa: E402

import main  # noqa: E402


class DumpVariables(Callback):
    """Saves this rank's global variables after the initial broadcast and after training."""
    _chief_only = False

    def __init__(self, out_dir):
        self._out = out_dir

    def _dump(self, suffix):
        import horovod.tensorflow as hvd  # initialized by HorovodTrainer
        variables = tf.compat.v1.global_variables()
        values = self.trainer.sess.run(variables)
        np.savez(os.path.join(self._out, 'rank{}{}.npz'.format(hvd.rank(), suffix)),
                 **{v.op.name: value for v, value in zip(variables, values)})

    def _before_train(self):
        # HorovodTrainer.initialize has broadcast rank 0's variables by now
        self._dump('-init')

    def _after_train(self):
        self._dump('')


if __name__ == '__main__':
    out_dir, argv = sys.argv[1], sys.argv[2:]
    other_ranks_logdir = None
    if argv[:1] == ['--other_ranks_logdir']:   # test-only, see above
        other_ranks_logdir, argv = argv[1], argv[2:]
    os.makedirs(out_dir, exist_ok=True)
    args = main.parse_args(argv)
    if other_ranks_logdir is not None and int(os.environ['HOROVOD_RANK']) > 0:
        args.logdir = other_ranks_logdir
    main.run_train(args, extra_callbacks=[DumpVariables(out_dir)])
