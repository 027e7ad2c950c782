"""Strategy selection and the helpers outside multi-worker training (the
distributed behaviour itself is tested in subprocesses, next to this file)."""

import json

import keras
import pytest
import tensorflow as tf

from keras_xformer import distribute

# TensorFlow-only feature (tests/conftest.py): skipped on JAX and PyTorch.
pytestmark = pytest.mark.tensorflow_only


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"task": {"type": "worker", "index": 0}}), "no `cluster`"),
    (json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:2"]},
                 "task": {"type": "worker", "index": 0}}), "only `chief` and `worker`"),
    (json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                 "task": {"type": "worker", "index": 2}}), "not one of its cluster's tasks"),
])
def test_a_malformed_tf_config_is_a_clear_error(monkeypatch, tf_config, message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message):
        distribute.strategy_from_environment()


def test_without_tf_config_one_device_is_the_chief(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = distribute.strategy_from_environment()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        assert isinstance(strategy, tf.distribute.MirroredStrategy)
        return
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert distribute.is_chief(strategy) and not distribute.in_multi_worker_mode(strategy)
    # The collective helpers are no-ops with one worker.
    assert distribute.broadcast_from_chief(strategy, 7) == 7
    distribute.assert_same_on_all_workers(strategy, [1, 2], "anything")


def test_the_mixin_must_come_before_keras_model():
    class Good(distribute.MultiWorkerFitMixin, keras.Model):
        pass

    assert Good.train_step is distribute.MultiWorkerFitMixin.train_step
    with pytest.raises(ValueError, match="put MultiWorkerFitMixin before keras.Model"):
        class Bad(keras.Model, distribute.MultiWorkerFitMixin):
            pass
