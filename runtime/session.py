"""Sessions: the training session (tensorpack's, its variables and tables initialized in one run), and sessions
that only load and compute weights (an export's)."""
import compat  # noqa: F401  (must come before TensorFlow)
import tensorflow as tf
from tensorpack.tfutils.sesscreate import NewSessionCreator

tfv1 = tf.compat.v1


class InitializedSession(NewSessionCreator):
    """tensorpack's session creator (its default session config; Horovod's trainer takes only this kind), with
    the global variables, local variables and tables initialized in one run where tensorpack runs three:
    every run of another set of ops costs TensorFlow a pass over the whole graph (4 s of GhostNetV3's start)."""

    def create_session(self):
        session = tfv1.Session(target=self.target, config=self.config)
        session.run(tf.group(tfv1.global_variables_initializer(), tfv1.local_variables_initializer(),
                             tfv1.tables_initializer()))
        return session


def without_graph_optimization():
    """A session config with grappler off, for sessions that run no image, only assign variables and compute the
    weights from them (or run a few images, where speed does not count): at each new set of fetched ops
    grappler's passes over a large graph take seconds (2-3 s of GhostNetV3's export) and find nothing to improve
    in such runs."""
    config = tfv1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    return config
