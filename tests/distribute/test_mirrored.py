"""`tf.distribute.MirroredStrategy`: two replicas (the CPU split into two
logical devices) train exactly like one device on the same global batch."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.distribute.cluster import ROOT
from tests.distribute.cluster import result_line

# TensorFlow-only feature (tests/conftest.py): skipped on JAX and PyTorch.
pytestmark = pytest.mark.tensorflow_only

SCRIPT = os.path.join(ROOT, "tests", "distribute", "tiny_training.py")


def test_mirrored_strategy_trains_step_for_step_like_one_device():
    run = subprocess.run([sys.executable, SCRIPT, "mirrored"], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    result = result_line(run.stdout)
    assert result["replicas"] == 2
    single, mirrored = np.array(result["single"]), np.array(result["mirrored"])
    assert len(single) == len(mirrored) == 12
    assert np.all(np.isfinite(mirrored))
    assert mirrored[-4:].mean() < mirrored[:4].mean() - 0.1, mirrored  # it learns
    # Same initial weights, same global batch of 8 (4 per replica): the
    # per-step losses of the 12 steps agree to float32 rounding (measured
    # max relative difference 3.3e-7).
    np.testing.assert_allclose(mirrored, single, rtol=1e-5, atol=0)
