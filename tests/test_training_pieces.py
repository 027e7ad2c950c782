import keras
import numpy as np
import pytest

from keras_xformer.losses import MaskedSparseCategoricalCrossentropy
from keras_xformer.metrics import MaskedAccuracy
from keras_xformer.schedules import TransformerSchedule

RNG = np.random.default_rng(0)


def gradient(fn, x, jit_compile=False):
    """d fn(x) / dx with the backend's own automatic differentiation,
    compiled (XLA, `jax.jit`, `torch.compile`) when `jit_compile`."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=jit_compile)
        def grad(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = fn(x)
            return tape.gradient(value, x)

        return grad(tf.constant(x)).numpy()
    if backend == "jax":
        import jax

        grad = jax.grad(fn)
        return np.asarray((jax.jit(grad) if jit_compile else grad)(x))
    import torch

    def grad(x):
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(fn(x), x)[0]

    grad = torch.compile(grad) if jit_compile else grad
    return grad(torch.tensor(x)).detach().cpu().numpy()


def reference_loss(y_true, logits, smoothing, ignore=0):
    """Keras' own smoothed categorical cross-entropy, on counted tokens."""
    num_classes = logits.shape[-1]
    one_hot = keras.ops.one_hot(y_true, num_classes)
    per_token = keras.losses.categorical_crossentropy(
        one_hot, logits, from_logits=True, label_smoothing=smoothing
    )
    mask = y_true != ignore
    return float(np.sum(np.asarray(per_token) * mask) / mask.sum())


class TestLoss:
    def test_equals_keras_smoothed_crossentropy_over_real_tokens(self):
        logits = RNG.standard_normal((3, 5, 11)).astype("float32")
        y = RNG.integers(1, 11, (3, 5))
        y[0, 3:] = 0
        y[2, 1:] = 0
        for smoothing in (0.0, 0.1):
            loss = MaskedSparseCategoricalCrossentropy(label_smoothing=smoothing)
            np.testing.assert_allclose(
                float(loss(y, logits)), reference_loss(y, logits, smoothing), rtol=1e-5
            )

    @pytest.mark.parametrize("jit_compile", [False, True])
    def test_hand_written_gradient_equals_automatic_one(self, jit_compile):
        logits = 3 * RNG.standard_normal((3, 5, 11)).astype("float32")
        y = RNG.integers(1, 11, (3, 5))
        y[1, 2:] = 0
        mask = (y != 0).astype("float32")
        for smoothing in (0.0, 0.1):
            loss = MaskedSparseCategoricalCrossentropy(label_smoothing=smoothing)

            def reference(logits, smoothing=smoothing):
                per_token = keras.losses.categorical_crossentropy(
                    keras.ops.one_hot(y, 11), logits, from_logits=True,
                    label_smoothing=smoothing,
                )
                return keras.ops.sum(keras.ops.multiply(per_token, mask)) / mask.sum()

            ours = gradient(lambda z, loss=loss: loss(y, z), logits, jit_compile)
            expected = gradient(reference, logits, jit_compile)
            np.testing.assert_allclose(ours, expected, atol=1e-6)
            assert np.all(ours[1, 2:] == 0.0)  # padding: no gradient

    def test_padding_does_not_count_and_all_padding_is_zero(self):
        loss = MaskedSparseCategoricalCrossentropy()
        logits = RNG.standard_normal((1, 4, 6)).astype("float32")
        y = np.array([[3, 4, 0, 0]])
        changed = logits.copy()
        changed[0, 2:] = 100.0
        assert float(loss(y, logits)) == pytest.approx(float(loss(y, changed)))
        assert float(loss(np.zeros((1, 4), int), logits)) == 0.0

    def test_probabilities_and_config(self):
        probs = keras.ops.softmax(RNG.standard_normal((2, 3, 5)).astype("float32"))
        y = np.array([[1, 2, 0], [3, 4, 1]])
        a = MaskedSparseCategoricalCrossentropy(from_logits=False)(y, probs)
        b = MaskedSparseCategoricalCrossentropy()(y, keras.ops.log(probs))
        np.testing.assert_allclose(float(a), float(b), rtol=1e-4)
        loss = MaskedSparseCategoricalCrossentropy(label_smoothing=0.1)
        clone = keras.losses.deserialize(keras.losses.serialize(loss))
        assert clone.label_smoothing == 0.1
        with pytest.raises(ValueError, match="label_smoothing"):
            MaskedSparseCategoricalCrossentropy(label_smoothing=1.5)


class TestMetric:
    def test_counts_only_real_tokens(self):
        metric = MaskedAccuracy()
        y = np.array([[1, 2, 0, 0]])
        logits = np.zeros((1, 4, 3), "float32")
        logits[0, 0, 1] = logits[0, 1, 0] = 1.0  # right, wrong
        logits[0, 2:, 0] = 1.0  # padding predicted as padding: not counted
        metric.update_state(y, logits)
        assert float(metric.result()) == pytest.approx(0.5)
        assert metric.name == "masked_accuracy"
        metric.reset_state()
        assert float(metric.result()) == 0.0


class TestSchedule:
    def test_paper_formula_and_first_step(self):
        schedule = TransformerSchedule(512, warmup_steps=4000)
        for step in (1, 100, 4000, 10000):
            expected = 512**-0.5 * min(step**-0.5, step * 4000**-1.5)
            assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)
        assert float(schedule(0)) == pytest.approx(float(schedule(1)))
        assert float(schedule(0)) > 0
        clone = TransformerSchedule.from_config(schedule.get_config())
        assert float(clone(123)) == pytest.approx(float(schedule(123)))
        optimizer = keras.optimizers.Adam(schedule)
        restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
        assert isinstance(restored.learning_rate, TransformerSchedule) or float(
            restored.learning_rate
        ) > 0
        with pytest.raises(ValueError):
            TransformerSchedule(0)
