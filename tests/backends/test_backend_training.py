"""`fit` (eager and compiled) and compiled `generate` on the backend of the
run; portable: every backend's suite runs it."""

import keras
import numpy as np
import pytest

from keras_xformer.decoding.search import _COMPILED
from keras_xformer.losses import MaskedSparseCategoricalCrossentropy
from keras_xformer.metrics import MaskedAccuracy
from keras_xformer.models import Transformer

BACKEND = keras.backend.backend()


def tiny_model():
    keras.utils.set_random_seed(1)
    return Transformer(20, 24, num_layers=1, hidden_dim=16, num_heads=2,
                       intermediate_dim=32, dropout=0.1)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_trains_with_and_without_jit_compile(jit_compile):
    """jit_compile=True is XLA on TensorFlow and JAX and torch.compile on
    PyTorch, where the loss's hand-written gradient once failed."""
    rng = np.random.default_rng(0)
    source = rng.integers(1, 20, (16, 7)).astype("int32")
    target = rng.integers(4, 24, (16, 9)).astype("int32")
    target[:8, 6:] = 0  # padding in some targets
    model = tiny_model()
    model.compile(keras.optimizers.Adam(1e-2),
                  MaskedSparseCategoricalCrossentropy(label_smoothing=0.1),
                  metrics=[MaskedAccuracy()], jit_compile=jit_compile)
    history = model.fit((source, target[:, :-1]), target[:, 1:], batch_size=8,
                        epochs=4, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert 0.0 <= history.history["masked_accuracy"][-1] <= 1.0


def test_generate_compiles_once_per_shape_and_sees_new_weights():
    model = tiny_model()
    source = np.array([[5, 6, 7, 3], [9, 3, 0, 0]], "int32")
    first = model.generate(source, max_length=6)
    again = model.generate(source, max_length=6)
    np.testing.assert_array_equal(first, again)
    (key,) = [k for k in _COMPILED[model] if k[1] == "greedy"]
    function = _COMPILED[model][key]
    if BACKEND == "torch":
        assert function is None  # eager, without autograd
    else:
        assert key[-1] is True  # "auto" compiles: XLA / jax.jit
    # New weights reach the cached program (they are its arguments on JAX,
    # captured variables on TensorFlow, not constants).
    embedding = model.target_embedding.embeddings
    embedding.assign(-embedding)
    changed = model.generate(source, max_length=6)
    assert len(_COMPILED[model]) == 1
    logits = keras.ops.convert_to_numpy(
        model((source, np.full((2, 1), 2, "int32")), training=False)
    )
    np.testing.assert_array_equal(changed[:, 0], logits[:, 0].argmax(-1))
