"""`tf.distribute.MultiWorkerMirroredStrategy`: two worker processes on
127.0.0.1 (one cluster, started once for this module) train the
`Transformer` with plain `model.fit`, in lockstep, exactly like one device on
the same global batch, and resume from the chief's backup."""

import os

import numpy as np
import pytest

from tests.distribute.cluster import ROOT
from tests.distribute.cluster import result_line
from tests.distribute.cluster import run_workers

# TensorFlow-only feature (tests/conftest.py): skipped on JAX and PyTorch.
pytestmark = pytest.mark.tensorflow_only

SCRIPT = os.path.join(ROOT, "tests", "distribute", "tiny_training.py")


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    shared = tmp_path_factory.mktemp("shared")
    runs = run_workers([SCRIPT, "worker"], workers=2, timeout=300,
                       env={"TINY_TRAINING_SHARED_DIR": str(shared)})
    for rc, output in runs:
        assert rc == 0, output[-4000:]
    return [result_line(output) for _, output in runs]


def test_two_workers_make_two_replicas_and_train_in_lockstep(workers):
    chief, worker = workers
    assert chief["replicas"] == worker["replicas"] == 2
    assert (chief["chief"], worker["chief"]) == (True, False)
    # Both log the same (all-reduced) losses and end with the same weights.
    assert chief["distributed"] == worker["distributed"]
    assert chief["final_weights_sum"] == worker["final_weights_sum"]
    losses, _ = chief["distributed"]
    assert len(losses) == 12 and np.all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.1, losses  # it learns


def test_two_workers_train_like_one_device(workers):
    # Same initial weights, same global batch of 8 (4 per worker): the 12
    # per-step losses and the evaluation loss agree to float32 rounding
    # (measured max relative difference 2.4e-7 in one run, 1.06e-5 at step
    # 11 in a CI run: the all-reduce sums in another order than one device,
    # and the difference grows over the steps).
    losses, evaluation = workers[0]["distributed"]
    single_losses, single_evaluation = workers[0]["single"]
    np.testing.assert_allclose(losses, single_losses, rtol=1e-4, atol=0)
    np.testing.assert_allclose(evaluation, single_evaluation, rtol=1e-5)


def test_workers_resume_from_the_chiefs_backup(workers):
    # MultiWorkerBackupAndRestore, from a backup of epoch 2 of 3: both
    # workers train the last epoch only, from the same restored weights; the
    # chief deletes the backup at the end, the worker leaves no temporary
    # folder. A worker that cannot read the chief's backup stops both with
    # a ValueError (not a hang, not diverged copies).
    chief, worker = workers
    first_losses = chief["distributed"][0][:4]
    for result in (chief, worker):
        backups = result["backups"]
        assert backups["resumed_epochs"] == 1
        assert backups["resumed_loss"][0] < np.mean(first_losses) - 0.1  # trained weights
        assert not backups["backup_left"] and backups["worker_temporaries_left"] == []
        assert "The workers disagree on the epoch to resume from" in backups["disagreement"]
        assert "[[2], [0]]" in backups["disagreement"]
    assert chief["backups"]["restored_weights_sum"] == worker["backups"]["restored_weights_sum"]


def test_keras_alone_still_fails_with_several_workers(workers):
    # The same model without keras_xformer.distribute.MultiWorkerFitMixin
    # fails in Keras, in the two places the mixin works around
    # (keras-team/keras#20585). When this test fails, Keras has fixed them:
    # remove the mixin's overrides.
    build_error, step_error = workers[0]["upstream_errors"]
    assert build_error and "PerReplica" in build_error, (
        "Keras' _maybe_symbolic_build now works with several workers: "
        f"remove MultiWorkerFitMixin._maybe_symbolic_build ({build_error})")
    assert step_error and "Invalid reduction dimension" in step_error, (
        "Keras' reduce_per_replica now handles scalar logs with several "
        f"workers: remove MultiWorkerFitMixin.train_step/test_step ({step_error})")
