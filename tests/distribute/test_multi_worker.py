"""`tf.distribute.MultiWorkerMirroredStrategy`: two worker processes on
127.0.0.1 train the `Transformer` with plain `model.fit`, in lockstep, and
exactly like one device on the same global batch."""

import os

import numpy as np

from tests.distribute.cluster import ROOT
from tests.distribute.cluster import result_line
from tests.distribute.cluster import run_workers

SCRIPT = os.path.join(ROOT, "tests", "distribute", "tiny_training.py")


def test_two_workers_fit_like_one_device_and_keras_alone_still_fails():
    runs = run_workers([SCRIPT, "worker"], workers=2, timeout=300)
    for rc, output in runs:
        assert rc == 0, output[-4000:]
    chief, worker = (result_line(output) for _, output in runs)
    assert chief["replicas"] == worker["replicas"] == 2
    assert (chief["chief"], worker["chief"]) == (True, False)

    # Lockstep: both workers log the same (all-reduced) losses and end with
    # the same weights.
    assert chief["distributed"] == worker["distributed"]
    assert chief["final_weights_sum"] == worker["final_weights_sum"]
    losses, evaluation = chief["distributed"]
    assert len(losses) == 12 and np.all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.1, losses  # it learns
    # Like one device with the same initial weights and global batch of 8
    # (4 per worker): per-step losses and the evaluation loss agree to
    # float32 rounding (measured max relative difference 3e-7).
    single_losses, single_evaluation = chief["single"]
    np.testing.assert_allclose(losses, single_losses, rtol=1e-5, atol=0)
    np.testing.assert_allclose(evaluation, single_evaluation, rtol=1e-5)

    # The same model without keras_xformer.distribute.MultiWorkerFitMixin
    # still fails in Keras, in the two places the mixin works around
    # (keras-team/keras#20585). When this fails, Keras has fixed them:
    # remove the mixin.
    build_error, step_error = chief["upstream_errors"]
    assert build_error and "PerReplica" in build_error, (
        "Keras' _maybe_symbolic_build now works with several workers: "
        f"remove MultiWorkerFitMixin._maybe_symbolic_build ({build_error})")
    assert step_error and "Invalid reduction dimension" in step_error, (
        "Keras' reduce_per_replica now handles scalar logs with several "
        f"workers: remove MultiWorkerFitMixin.train_step/test_step ({step_error})")
