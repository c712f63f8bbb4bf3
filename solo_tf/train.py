"""Trains SOLO: ``python -m solo_tf.train --flagfile experiments/r50.flags``.

Every config field is a flag (``--helpfull`` lists them); a run resumes from ``--model_dir``.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from solo_tf import entry_point, eval_lib, train_lib
from solo_tf import flags as solo_flags
from solo_tf.detector import Detector

solo_flags.define_flags()
flags.DEFINE_bool("eval_at_end", True, "Evaluate mask AP on the validation split at the end.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    config = solo_flags.config_from_flags()
    if not config.train.model_dir:
        raise app.UsageError("--model_dir is required")
    os.makedirs(config.train.model_dir, exist_ok=True)
    logging.get_absl_handler().use_absl_log_file("train", config.train.model_dir)
    train_lib.keras_policy(config.train.mixed_precision)
    has_val = bool(config.data.val_annotations or config.data.val_tfrecords)
    eval_fn = eval_lib.make_eval_fn(config) if has_val else None
    _, metrics = train_lib.train(config, eval_fn=eval_fn)
    logging.info("Training stopped at step %d: %s", metrics["step"], metrics)
    if metrics["skipped"]:
        log = os.path.join(config.train.model_dir, "train.INFO")
        print(f"--bad_sample_policy=skip: {metrics['skipped']} (each named in {log})")
    if FLAGS.eval_at_end and eval_fn is not None and not metrics["stopped_by_sigterm"]:
        detector = Detector.from_model_dir(config.train.model_dir, config=config)
        result = eval_fn(detector.model)
        logging.info("Final mask AP: %s", result)


if __name__ == "__main__":
    entry_point.run(main)
