"""Shared pytest set-up: quiet TensorFlow logs and deterministic seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The longest test files, scheduled first (in this order) so that under `make test`'s two
# pytest-xdist workers (`--dist loadfile --no-loadscope-reorder`: without the second flag xdist
# sorts files by their number of tests) each starts on one at once instead of ending on it.
LONGEST_FIRST = ("tests/test_overfit.py", "tests/test_train_lib.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the rest keeps pytest's order
