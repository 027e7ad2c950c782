import keras
import numpy as np
import pytest

from keras_xformer.layers._dropout import Dropout
from keras_xformer.layers._dropout import random_bits
from tests.helpers import LayerTestCase

BACKEND = keras.backend.backend()


def compiled(fn):
    """`fn` XLA-compiled the backend's way (PyTorch has no XLA: as is)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    return fn


def in_xla(layer, x, training=True):
    """The layer inside an XLA-compiled function, where it uses its hashed
    masks (on PyTorch: Keras' dropout, eagerly)."""
    if BACKEND == "jax":
        import jax

        # Stateless, as Keras' JAX trainer calls layers: the seed
        # generator's new state comes back out of the compiled function.
        if not layer.built:
            layer.build(np.shape(x))
        state = [v.value for v in layer.non_trainable_variables]
        step = jax.jit(lambda state, x: layer.stateless_call([], state, x, training=training))
        y, state = step(state, x)
        for variable, value in zip(layer.non_trainable_variables, state):
            variable.assign(value)
    else:
        y = compiled(lambda x: layer(x, training=training))(x)
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(y, "float32")))


class DropoutTest(LayerTestCase):
    def test_keras_harness(self):
        self.run_keras_layer_test(
            Dropout,
            {"rate": 0.3, "seed": 1},
            input_shape=(2, 5, 4),
            expected_output_shape=(2, 5, 4),
            expected_num_non_trainable_variables=1,  # the seed generator's state
            supports_masking=True,
        )

    def test_outside_xla_it_is_keras_dropout(self):
        x = np.random.default_rng(0).standard_normal((4, 8, 16)).astype("float32")
        ours, theirs = Dropout(0.3, seed=5), keras.layers.Dropout(0.3, seed=5)
        for _ in range(2):
            np.testing.assert_array_equal(ours(x, training=True), theirs(x, training=True))
        if BACKEND == "torch":
            return  # no XLA on PyTorch: always Keras' dropout
        # Inside XLA the masks are hashed: a different draw of the same rate.
        self.assertFalse(np.array_equal(in_xla(ours, x), np.asarray(theirs(x, training=True))))

    def test_inference_and_rate_zero_are_identity(self):
        x = np.random.default_rng(0).standard_normal((3, 4, 8)).astype("float32")
        np.testing.assert_array_equal(Dropout(0.5)(x, training=False), x)
        np.testing.assert_array_equal(Dropout(0.0)(x, training=True), x)
        np.testing.assert_array_equal(in_xla(Dropout(0.5), x, training=False), x)

    def test_drops_the_rate_and_rescales_the_rest(self):
        x = np.ones((64, 64, 64), "float32")  # 262,144 draws
        for rate in (0.1, 0.5):
            for policy in ("float32", "mixed_bfloat16", "mixed_float16"):
                layer = Dropout(rate, seed=3, dtype=policy)
                y = in_xla(layer, x)
                dropped = np.mean(y == 0)
                # 5 binomial standard deviations.
                self.assertLess(abs(dropped - rate), 5 * np.sqrt(rate * (1 - rate) / y.size))
                kept = y[y != 0]
                np.testing.assert_allclose(kept, 1 / (1 - rate), rtol=1e-2)

    def test_new_mask_every_call_and_independent_masks(self):
        layer = Dropout(0.5, seed=0)
        x = np.ones((256, 256), "float32")
        a = in_xla(layer, x) == 0
        b = in_xla(layer, x) == 0
        self.assertLess(abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]), 0.02)
        # Neighbouring elements are independent too.
        self.assertLess(abs(np.corrcoef(a[:, :-1].ravel(), a[:, 1:].ravel())[0, 1]), 0.02)

    def test_random_bits_are_uniform(self):
        bits = np.asarray(random_bits((1 << 18,), np.array([5, 7]))).astype(np.uint64)
        frequencies = [np.mean((bits >> i) & 1) for i in range(32)]
        np.testing.assert_allclose(frequencies, 0.5, atol=0.01)
        other_seed = np.asarray(random_bits((1 << 18,), np.array([5, 8])))
        self.assertLess(np.mean(other_seed == np.asarray(bits, np.uint32)), 1e-3)

    def test_same_mask_with_and_without_xla(self):
        seed = keras.ops.convert_to_tensor([11, 12], "int32")
        eager = random_bits((4, 33, 7), seed)
        xla = compiled(lambda s: random_bits((4, 33, 7), s))(seed)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(eager), keras.ops.convert_to_numpy(xla)
        )

    @pytest.mark.tensorflow_only
    def test_dynamic_batch_in_a_graph(self):
        import tensorflow as tf

        layer = Dropout(0.5, seed=1)
        fn = tf.function(
            lambda x: layer(x, training=True),
            input_signature=[tf.TensorSpec((None, 6), "float32")],
            jit_compile=True,
        )
        y = fn(tf.ones((9, 6)))
        self.assertEqual(y.shape, (9, 6))
        self.assertTrue(0 < np.mean(np.asarray(y) == 0) < 1)
