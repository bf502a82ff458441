"""Shared fixtures; tests marked ``gpu`` skip themselves where CuPy sees no GPU."""

import numpy as np
import pytest

from layerprune.problems.backend import gpu_available


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU with CuPy (run through the device tool)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    """A fresh generator per test, seeded from the test's name so failures reproduce."""
    import hashlib
    import os

    name = os.environ.get("PYTEST_CURRENT_TEST", "layerprune")
    return np.random.default_rng(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
