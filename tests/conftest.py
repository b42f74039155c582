"""Shared test setup.

``import tfprec`` first: it sets TF_USE_LEGACY_KERAS=1 before TensorFlow loads.
``tfprec.application.cli`` next: its absl flags (tfprec.application.flags)
are then defined before any example script (imported by test_examples.py)
declares flags of the same names, which the examples skip when they already
exist, whatever order pytest collects in.

``slow``: a marker for long tests whose coverage faster tests repeat;
``pytest -m "not slow"`` leaves them out.

``shared_data_dir``: the offline dataset folder (``../shared/data`` next to
the repository, or ``$TFPREC_DATA_DIR``).  Tests that need it skip on a
developer machine without it, but FAIL under CI (``CI`` set), where the
folder is always laid next to the clone.
"""
import os

import pytest

import tfprec  # noqa: F401
import tfprec.application.cli  # noqa: F401
from tfprec.application import data as data_lib


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a long test (> ~15 s) whose coverage faster tests "
        "repeat; deselect with -m \"not slow\"")


def shared_file(name: str) -> str:
    """Path of ``name`` in the shared data folder; skips (fails under CI)
    when it is missing."""
    d = data_lib.resolve_data_dir()
    path = os.path.join(d, name) if d else None
    if path is None or not os.path.isfile(path):
        msg = (f"{name} not found in the shared data folder ({d or 'none: set '}"
               f"{'' if d else data_lib.ENV_DATA_DIR}); it must be next to the "
               "repository as ../shared/data")
        if os.environ.get("CI"):
            pytest.fail("CI: " + msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def shared_data_dir() -> str:
    """The shared data folder holding mnist.npz and cifar10_jpeg75.npz."""
    return os.path.dirname(shared_file("mnist.npz"))
