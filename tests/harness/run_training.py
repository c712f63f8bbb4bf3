"""Runs solo_tf training in a fresh process for the distributed and resume tests.

``python tests/harness/run_training.py --logical_cpus N [train flags...]``: splits the CPU
into N logical devices (must happen before TensorFlow starts), trains with the given flags
and writes the final trainable weights to ``<model_dir>/weights_<task>.npz``.
"""

import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import app, flags  # noqa: E402

from solo_tf import flags as solo_flags  # noqa: E402

solo_flags.define_flags()
flags.DEFINE_integer("logical_cpus", 1, "Logical CPU devices (replicas under mirrored).")
flags.DEFINE_integer("kill_at_step", 0, "SIGKILL this process once training reaches this step.")
flags.DEFINE_integer("sigterm_at_step", 0, "SIGTERM this process once training reaches this step.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf

    if FLAGS.logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.logical_cpus
        )
    from solo_tf import train_lib

    config = solo_flags.config_from_flags()

    def after_loop(step):
        if FLAGS.kill_at_step and step >= FLAGS.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        if FLAGS.sigterm_at_step and step >= FLAGS.sigterm_at_step:
            os.kill(os.getpid(), signal.SIGTERM)

    eval_fn = None
    if config.data.val_annotations and config.train.eval_every:
        from solo_tf import eval_lib

        eval_fn = eval_lib.make_eval_fn(config, batch_size=4)
    model, metrics = train_lib.train(config, progress=False, after_loop=after_loop, eval_fn=eval_fn)
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0)
    weights = {v.path: np.asarray(v.numpy()) for v in model.trainable_variables}
    np.savez(os.path.join(config.train.model_dir, f"weights_{task}.npz"), **weights)
    with open(os.path.join(config.train.model_dir, f"metrics_{task}.json"), "w") as f:
        json.dump(metrics, f)


if __name__ == "__main__":
    app.run(main)
