"""How every ``python -m solo_tf.<name>`` ends: ``run(main)`` instead of ``absl.app.run``.

An error ends the process at once with exit code 1 and one readable line on stderr: the
error's own message (file, image id...), without TensorFlow's graph-node decorations; the
traceback goes to the log at debug level. The process leaves through ``os._exit``: after an
error inside tf.data, the destructors of its iterators can wait forever on decoding threads
that need the interpreter, and an input error must never look like a hang.

SIGTERM and SIGINT are honoured in every state, a main thread blocked inside TensorFlow
included (``termination``): SIGTERM ends a command with exit code 143 and the line
``NAME: stopped by SIGTERM`` (training first saves a checkpoint and exits 0), SIGINT with 130.
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys
import traceback

import tensorflow as tf
from absl import app, logging

from solo_tf import termination

_DECORATIONS = (
    r"\{\{function_node [^}]*\}\}",  # {{function_node __wrapped__IteratorGetNext...}}
    r"\[\[\{\{node [^}]*\}\}\]\]",  # [[{{node EagerPyFunc}}]]
    r"\[\[\w+\]\]",  # [[MultiDeviceIteratorGetNextFromShard]], [[RemoteCall]] (training)
    r"\[Op:\w+\]",
    r"\bname: *$",
)


def readable_message(error: BaseException) -> str:
    """The message of ``error`` with TensorFlow's decorations and assertion wrapper removed."""
    message = error.message if isinstance(error, tf.errors.OpError) else str(error)
    for pattern in _DECORATIONS:
        message = re.sub(pattern, "", message, flags=re.MULTILINE)
    match = re.search(r"assertion failed: \[(.*)\]", message, flags=re.DOTALL)
    if match:
        message = match.group(1).replace("\\'", "'")  # the assertion escapes quotes
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines) or type(error).__name__


def run(main) -> None:
    """``absl.app.run(main)``; an exception from ``main`` ends the process as described above."""

    def guarded(argv):
        termination.install()
        try:
            return main(argv)
        except (SystemExit, app.UsageError):
            raise
        except BaseException as error:  # noqa: BLE001 - every error ends the same way
            logging.debug("%s", traceback.format_exc())
            name = os.path.basename(sys.argv[0]) or "solo_tf"
            if isinstance(error, termination.Terminated):
                line, code = f"{name}: stopped by SIGTERM", 143
            else:
                line = f"{name}: error: {readable_message(error)}"
                code = 130 if isinstance(error, KeyboardInterrupt) else 1
            sys.stderr.write(line + "\n")
            std_logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    app.run(guarded)
