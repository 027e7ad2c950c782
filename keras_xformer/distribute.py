"""Training under `tf.distribute`: one machine's devices or several machines.

- `strategy_from_environment()` picks the strategy the way the TensorFlow
  guides do: `MultiWorkerMirroredStrategy` when `TF_CONFIG` describes a
  cluster, `MirroredStrategy` when more than one GPU is visible, else the
  default (one device) strategy.
- `MultiWorkerFitMixin` makes plain `model.fit` / `model.evaluate` work
  under `MultiWorkerMirroredStrategy` (Keras 3 fails there, see below).
  `keras_xformer.models.Transformer` already includes it; add it to your
  own subclassed models as `class MyModel(MultiWorkerFitMixin, keras.Model)`.
- `MultiWorkerBackupAndRestore`: `AtomicBackupAndRestore` with the
  multi-worker conventions (the chief writes the backup, every worker
  restores from it, and all must resume at the same epoch).
- `is_chief`, `in_multi_worker_mode`, `broadcast_from_chief`,
  `assert_same_on_all_workers`.

Why `MultiWorkerFitMixin` exists (keras-team/keras#20585, open for Keras
3.15.1 with TensorFlow 2.21): with several workers, `model.fit` fails in
two places of `keras/src/backend/tensorflow/trainer.py`:

1. `TensorFlowTrainer._maybe_symbolic_build`, run by `fit` and `evaluate`
   before the first step, builds the model from the first batch by
   `strategy.reduce("MEAN", batch, axis=None)` on the whole
   `((source, target), labels)` structure; with collectives that reduce does
   not accept a structure of `PerReplica` values ("Attempt to convert a
   value (PerReplica ...) with an unsupported type"). The build only needs
   shapes, so the mixin builds from this worker's first replica batch.
2. `reduce_per_replica` (multi-worker branch) reduces every output of
   `train_step` / `test_step` with `strategy.reduce("MEAN", v, axis=0)`,
   which fails on the scalar loss and metrics ("Invalid reduction
   dimension 0 for input with 0 dimensions"). The mixin's `train_step`
   and `test_step` return each output with a leading axis of length 1, so
   that this reduction is the mean over replicas, exactly what the
   single-machine branch (`tf.reduce_mean` of the replicas' values) gives.

Both changes only act in multi-worker mode (more than one worker in the
cluster), on the TensorFlow backend; everywhere else the mixin defers to
Keras unchanged. Remove it once Keras fixes the issue:
`tests/distribute/test_multi_worker.py` checks that a model without it
still fails, and will say so when upstream is fixed.
"""

import inspect
import json
import os
import shutil
import tempfile

import keras

from keras_xformer.callbacks import AtomicBackupAndRestore


# Strategy and roles -------------------------------------------------------


def _tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}): {raw!r}") from None
    if not isinstance(config, dict) or not config.get("cluster"):
        raise ValueError(f"TF_CONFIG has no `cluster`: {raw!r}")
    cluster = config["cluster"]
    unsupported = sorted(set(cluster) - {"chief", "worker"})
    if unsupported:
        raise ValueError(
            f"TF_CONFIG's cluster has {unsupported} tasks: only `chief` and "
            "`worker` tasks are supported (MultiWorkerMirroredStrategy, "
            "synchronous data parallelism)."
        )
    task = config.get("task") or {}
    if task.get("type") not in cluster or not (
        0 <= int(task.get("index", -1)) < len(cluster[task.get("type")])
    ):
        raise ValueError(f"TF_CONFIG's `task` is not one of its cluster's tasks: {raw!r}")
    return config


def strategy_from_environment():
    """The `tf.distribute` strategy for this process.

    - `TF_CONFIG` set: `tf.distribute.MultiWorkerMirroredStrategy` (create
      it before any other TensorFlow work, as TensorFlow requires);
    - otherwise more than one GPU: `tf.distribute.MirroredStrategy`;
    - otherwise the default strategy (one device).

    Raises:
        ValueError: `TF_CONFIG` is malformed or names tasks other than
            `chief` and `worker` (parameter servers, evaluators).
    """
    import tensorflow as tf

    if _tf_config() is not None:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def in_multi_worker_mode(strategy=None):
    """Whether `strategy` (default: the current one) spans several workers."""
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    # The condition Keras' own `reduce_per_replica` uses.
    return bool(strategy.extended._in_multi_worker_mode())


def is_chief(strategy=None):
    """Whether this process writes checkpoints and artefacts: the `chief`
    task, or worker 0 when the cluster has no chief; always true outside
    multi-worker training."""
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    return bool(strategy.extended.should_checkpoint)


def _gather_from_workers(strategy, value):
    """Every replica's copy of `value` (ints), one row per replica in
    replica order (the chief's first). A collective."""
    import numpy as np
    import tensorflow as tf

    local = np.atleast_1d(np.asarray(value, "int64"))
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(local[None])
    )
    return strategy.gather(per_replica, axis=0).numpy()


def broadcast_from_chief(strategy, value):
    """The chief's `value` (an int), on every worker; `value` itself outside
    multi-worker training. A collective: every worker must call it, in the
    same order."""
    if not in_multi_worker_mode(strategy):
        return value
    return int(_gather_from_workers(strategy, value)[0, 0])


def assert_same_on_all_workers(strategy, value, what):
    """Raises a `ValueError` on every worker unless all workers pass the same
    `value` (an int or a list of ints: epochs, vocabulary fingerprints).
    A collective, like `broadcast_from_chief`; no-op outside multi-worker
    training."""
    if not in_multi_worker_mode(strategy):
        return
    gathered = _gather_from_workers(strategy, value)
    if not (gathered == gathered[:1]).all():
        raise ValueError(
            f"The workers disagree on {what}: {gathered.tolist()} "
            "(one row per replica, the chief's first)."
        )


# model.fit under MultiWorkerMirroredStrategy ------------------------------


def _first_replica_batch(strategy, batch):
    import tensorflow as tf

    return tf.nest.map_structure(
        lambda x: strategy.experimental_local_results(x)[0], batch
    )


def _with_replica_axis(outputs):
    import tensorflow as tf

    return tf.nest.map_structure(
        lambda v: tf.expand_dims(v, 0) if tf.is_tensor(v) else v, outputs
    )


def _keras_symbolic_build_is_known():
    """Keras' private hook still has the signature the override was written
    against (Keras 3.15.1): otherwise leave Keras alone (and the test of the
    upstream failure, tests/distribute/test_multi_worker.py, says whether
    the override is still needed)."""
    try:
        from keras.src.backend.tensorflow.trainer import TensorFlowTrainer
    except ImportError:
        return False
    method = getattr(TensorFlowTrainer, "_maybe_symbolic_build", None)
    if method is None:
        return False
    return list(inspect.signature(method).parameters) == ["self", "iterator", "data_batch"]


if keras.backend.backend() == "tensorflow":

    class MultiWorkerFitMixin:
        """Makes `fit` and `evaluate` work under multi-worker
        `MultiWorkerMirroredStrategy` (keras-team/keras#20585; see the module
        docstring for the two Keras code paths it works around).

        Put it first: `class MyModel(MultiWorkerFitMixin, keras.Model)`.
        Outside multi-worker training it changes nothing. A subclass that
        overrides `train_step` / `test_step` returns its logs through
        `super()` or adds the leading axis itself.

        Raises:
            ValueError: at class creation, when the mixin comes after
                `keras.Model` in the bases (its overrides would be shadowed).
        """

        def __init_subclass__(cls, **kwargs):
            super().__init_subclass__(**kwargs)
            mro = cls.__mro__
            if keras.Model in mro and mro.index(keras.Model) < mro.index(MultiWorkerFitMixin):
                raise ValueError(
                    f"{cls.__name__}: put MultiWorkerFitMixin before keras.Model in the "
                    f"bases, e.g. `class {cls.__name__}(MultiWorkerFitMixin, keras.Model)`; "
                    "after it, Keras' own methods would shadow the fix."
                )

        if _keras_symbolic_build_is_known():

            def _maybe_symbolic_build(self, iterator=None, data_batch=None):
                strategy = self.distribute_strategy
                if (
                    iterator is not None
                    and self._distribute_strategy is not None
                    and in_multi_worker_mode(strategy)
                ):
                    # Keras' own loop: the first batch of the epoch iterator.
                    for _, _, batches in iterator:
                        data_batch = _first_replica_batch(strategy, next(batches))
                        break
                    iterator = None
                return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

        def train_step(self, data):
            outputs = super().train_step(data)
            if in_multi_worker_mode(self.distribute_strategy):
                return _with_replica_axis(outputs)
            return outputs

        def test_step(self, data):
            outputs = super().test_step(data)
            if in_multi_worker_mode(self.distribute_strategy):
                return _with_replica_axis(outputs)
            return outputs

else:

    class MultiWorkerFitMixin:
        """No change on the JAX and PyTorch backends (their distribution
        does not go through `tf.distribute`)."""


# Backups ------------------------------------------------------------------


class MultiWorkerBackupAndRestore(AtomicBackupAndRestore):
    """`AtomicBackupAndRestore` that also works with several workers.

    The usual multi-worker convention (that of `tf.keras`): the chief writes
    the backup to `backup_dir`; every other worker writes its copy to a
    temporary folder, deleted at once (all workers save, so that variables
    that need all workers to be read can be); every worker restores from
    `backup_dir`, which must therefore be on a file system they all see
    (one machine, or a shared disk). All workers must then resume from the
    same epoch: otherwise training stops on every worker with a
    `ValueError`, instead of hanging or training diverged copies. Only the
    chief deletes the backup at the end. With one worker it is
    `AtomicBackupAndRestore`.
    """

    def _is_chief(self):
        return is_chief(self.model.distribute_strategy)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        strategy = self.model.distribute_strategy
        if in_multi_worker_mode(strategy):
            epoch = getattr(self.model, "_initial_epoch", None) or 0
            assert_same_on_all_workers(
                strategy, epoch,
                f"the epoch to resume from (the backup in {self.backup_dir} must be "
                "readable by every worker: a shared file system)",
            )

    def _save_model(self):
        if self._is_chief():
            return super()._save_model()
        paths = self.backup_dir, self._weights_path, self._training_metadata_path
        temporary = tempfile.mkdtemp(prefix="workertemp_")
        self.backup_dir = temporary
        self._weights_path = os.path.join(temporary, "latest.weights.h5")
        self._training_metadata_path = os.path.join(temporary, "training_metadata.json")
        try:
            super()._save_model()
        finally:
            self.backup_dir, self._weights_path, self._training_metadata_path = paths
            shutil.rmtree(temporary, ignore_errors=True)

    def on_train_end(self, logs=None):
        if self._is_chief():
            super().on_train_end(logs)


__all__ = [
    "MultiWorkerBackupAndRestore",
    "MultiWorkerFitMixin",
    "assert_same_on_all_workers",
    "broadcast_from_chief",
    "in_multi_worker_mode",
    "is_chief",
    "strategy_from_environment",
]
