"""A tiny deterministic Transformer training run, started as a subprocess by
the tests in this folder (a strategy's devices and collectives must be set up
before TensorFlow starts, so each configuration needs a fresh process).

    python tiny_training.py mirrored   # 2 logical CPUs: 1 device vs MirroredStrategy
    python tiny_training.py worker     # one MultiWorkerMirroredStrategy task (TF_CONFIG)

Prints one line `RESULT <json>`.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

GLOBAL_BATCH = 8
STEPS_PER_EPOCH = 4
EPOCHS = 3
VOCABULARY = 24


def arrays():
    """Fixed ids with padding; rows i and i + 4 of every global batch have
    the same lengths, so each half (one replica's batch) holds the same
    number of real tokens and the per-replica token means average to the
    global one."""
    rng = np.random.default_rng(0)
    n = GLOBAL_BATCH * STEPS_PER_EPOCH
    source = rng.integers(4, VOCABULARY, (n, 6)).astype("int32")
    target = rng.integers(4, VOCABULARY, (n, 8)).astype("int32")
    half = GLOBAL_BATCH // 2
    for start in range(0, n, GLOBAL_BATCH):
        for row in range(half):
            source_length, target_length = rng.integers(2, 7), rng.integers(3, 9)
            for r in (start + row, start + row + half):
                source[r, source_length:] = 0
                target[r, target_length:] = 0
    return source, target


def dataset():
    import tensorflow as tf

    source, target = arrays()
    data = tf.data.Dataset.from_tensor_slices(((source, target[:, :-1]), target[:, 1:]))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.batch(GLOBAL_BATCH).with_options(options)


def make_model(cls=None):
    from keras_xformer.models import Transformer

    cls = cls or Transformer
    model = cls(VOCABULARY, VOCABULARY, num_layers=1, hidden_dim=32, num_heads=2,
                intermediate_dim=64, dropout=0.0)
    model.build()
    return model


def compile_model(model):
    import keras

    from keras_xformer.losses import MaskedSparseCategoricalCrossentropy
    from keras_xformer.metrics import MaskedAccuracy

    model.compile(keras.optimizers.Adam(1e-2), MaskedSparseCategoricalCrossentropy(),
                  metrics=[MaskedAccuracy()])


def step_losses(model, evaluate=False):
    """Fits `EPOCHS` epochs; returns every step's own loss (Keras logs the
    running mean of the epoch, undone here), and the evaluation loss when
    asked."""
    import keras

    running = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            running.append((batch, float(logs["loss"])))

    model.fit(dataset(), epochs=EPOCHS, verbose=0, callbacks=[Record()])
    losses = []
    for i, (batch, mean) in enumerate(running):
        previous = running[i - 1][1] if batch else 0.0
        losses.append((batch + 1) * mean - batch * previous)
    if not evaluate:
        return losses
    return losses, float(model.evaluate(dataset(), verbose=0, return_dict=True)["loss"])


def mirrored():
    """One device vs MirroredStrategy over 2 logical CPUs, same initial
    weights and global batch. (Not with XLA: `jit_compile=True` around a
    multi-device step fails in TensorFlow, "Trying to access resource ...
    located in device CPU:1 from device CPU:0", and Keras' default
    `jit_compile="auto"` turns XLA off under a strategy.)"""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    keras.utils.set_random_seed(0)
    model = make_model()
    initial = model.get_weights()
    compile_model(model)
    result = {"single": step_losses(model)}
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = make_model()
        model.set_weights(initial)
        compile_model(model)
    result["replicas"] = strategy.num_replicas_in_sync
    result["mirrored"] = step_losses(model)
    return result


def worker():
    """One task of a 2-worker MultiWorkerMirroredStrategy cluster: first the
    two Keras failures (our model without the fix), then the fixed model,
    then a single-device run of the same global batch from the same weights."""
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import keras

    from keras_xformer.distribute import is_chief
    from keras_xformer.models import Transformer

    class WithoutFix(Transformer):  # Keras' own fit machinery
        _maybe_symbolic_build = keras.Model._maybe_symbolic_build
        train_step = keras.Model.train_step
        test_step = keras.Model.test_step

    class OnlyBuildFix(Transformer):
        train_step = keras.Model.train_step

    result = {"replicas": strategy.num_replicas_in_sync, "chief": is_chief(strategy),
              "upstream_errors": []}
    for cls in (WithoutFix, OnlyBuildFix):
        with strategy.scope():
            model = make_model(cls)
            compile_model(model)
        try:
            model.fit(dataset(), epochs=1, verbose=0)
            result["upstream_errors"].append(None)
        except Exception as e:  # noqa: BLE001 - the message is the result
            result["upstream_errors"].append(f"{type(e).__name__}: {str(e)[:300]}")

    with strategy.scope():
        model = make_model()
        compile_model(model)
    initial = model.get_weights()
    result["distributed"] = step_losses(model, evaluate=True)
    result["final_weights_sum"] = float(sum(np.abs(w).sum() for w in model.get_weights()))
    if is_chief(strategy):  # the reference, once
        reference = make_model()
        reference.set_weights(initial)
        compile_model(reference)
        result["single"] = step_losses(reference, evaluate=True)
    result["backups"] = backups(strategy, model, initial)
    return result


def backups(strategy, model, initial):
    """`MultiWorkerBackupAndRestore` on the trained `model`: every worker
    resumes from the chief's backup; workers that would resume from
    different epochs stop with a ValueError."""
    import glob
    import tempfile

    from keras_xformer.distribute import MultiWorkerBackupAndRestore
    from keras_xformer.distribute import broadcast_from_chief
    from keras_xformer.distribute import is_chief

    shared = os.environ["TINY_TRAINING_SHARED_DIR"]
    chief_backup = os.path.join(shared, "backup")
    # This task's own temporary folder (the other task's come and go).
    tempfile.tempdir = os.path.join(shared, f"tmp_{strategy.cluster_resolver.task_id}")
    os.makedirs(tempfile.tempdir)
    if is_chief(strategy):  # an interrupted run's backup: epoch 2 of 3 done
        os.makedirs(chief_backup)
        model.save_weights(os.path.join(chief_backup, "latest.weights.h5"))
        with open(os.path.join(chief_backup, "training_metadata.json"), "w") as f:
            json.dump({"epoch": 2, "batch": 0}, f)
    broadcast_from_chief(strategy, 0)  # a barrier: written before anyone reads it
    result = {}

    def fit(backup_dir):
        model.set_weights(initial)  # only the restore brings the trained weights back
        return model.fit(dataset(), epochs=EPOCHS, verbose=0,
                         callbacks=[MultiWorkerBackupAndRestore(backup_dir)])

    # A worker that cannot see the chief's backup would start from epoch 0.
    try:
        fit(chief_backup if is_chief(strategy) else os.path.join(shared, "elsewhere"))
        result["disagreement"] = None
    except ValueError as e:
        result["disagreement"] = str(e)

    temporary = set(glob.glob(os.path.join(tempfile.gettempdir(), "workertemp_*")))
    history = fit(chief_backup)
    # A barrier: the chief deletes its backup at the end of its own `fit`,
    # which a worker can leave first: a worker looking before the deletion
    # is the likely cause of a failure of this check in CI at f7a0dd8.
    broadcast_from_chief(strategy, 0)
    result["resumed_epochs"] = len(history.history["loss"])
    result["resumed_loss"] = history.history["loss"]
    result["restored_weights_sum"] = float(sum(np.abs(w).sum() for w in model.get_weights()))
    result["backup_left"] = os.path.exists(chief_backup)
    result["worker_temporaries_left"] = sorted(
        set(glob.glob(os.path.join(tempfile.gettempdir(), "workertemp_*"))) - temporary)
    return result


if __name__ == "__main__":
    mode = sys.argv[1]
    result = {"mirrored": mirrored, "worker": worker}[mode]()
    print("RESULT " + json.dumps(result), flush=True)
