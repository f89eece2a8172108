"""Resuming a training log directory: its checkpoint must be of the network the flags build."""
import compat  # noqa: F401  (must come before TensorFlow)
from tensorpack.tfutils.sessinit import SaverRestore

from weights.checkpoint import CheckpointError, check_checkpoint, checkpoint_shapes, checkpoint_variables

RESUME_HINT = 'resume with the flags it was trained with, or start afresh with --restart or another --logdir'


class ResumeInit(SaverRestore):
    """Restores everything from a log directory's checkpoint once the graph is built; CheckpointError
    (one line, naming the flag at fault when the checkpoint shows it) when it does not fit that graph."""

    def __init__(self, path, logdir, model):
        super().__init__(path)
        self.logdir, self.model = logdir, model

    def _setup_graph(self):
        mismatch = resume_mismatch(self.path, self.logdir, self.model)
        if mismatch:
            raise CheckpointError(mismatch)
        super()._setup_graph()


def resume_mismatch(path, logdir, model):
    """Why the checkpoint `path` of `logdir` does not fit the model built in the default graph, or None."""
    stored, variables = checkpoint_shapes(path), checkpoint_variables()
    built = {v.op.name: v.shape.as_list() for v in variables}
    checkpoint_flags, built_flags = model.checkpoint_flags(stored), model.checkpoint_flags(built)
    for flag, value in built_flags.items():
        if flag in checkpoint_flags and checkpoint_flags[flag] != value:
            return '{} holds a checkpoint of {} {} ({}), but these flags build {} {}: {}'.format(
                logdir, flag, checkpoint_flags[flag], path, flag, value, RESUME_HINT)
    classifier_bias = model.scope + '/' + model.classifier_bias
    if classifier_bias in stored and stored[classifier_bias] != built[classifier_bias]:
        return '{} holds a checkpoint of {} classes ({}), but the data has {}: {}'.format(
            logdir, stored[classifier_bias][0], path, built[classifier_bias][0], RESUME_HINT)
    missing, mismatched = check_checkpoint(path, variables)
    if missing or mismatched:
        first = '{} is missing'.format(missing[0]) if missing else '{} is {} there, {} here'.format(*mismatched[0])
        return '{} holds a checkpoint ({}) of another network: {} ({} variables missing, {} of another shape): ' \
               '{}'.format(logdir, path, first, len(missing), len(mismatched), RESUME_HINT)
    return None
