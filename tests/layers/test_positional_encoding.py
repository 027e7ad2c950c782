import keras
import numpy as np
import pytest

from keras_xformer.layers import LearnedPositionalEncoding
from keras_xformer.layers import SinusoidalPositionalEncoding
from keras_xformer.layers import TokenAndPositionEmbedding
from tests.helpers import LayerTestCase
from tests.helpers import random_inputs


def paper_sinusoid(length, dim, start=0, max_wavelength=10000):
    """Section 3.5, written out position by position."""
    table = np.zeros((length, dim))
    for p in range(length):
        for j in range(dim):
            i = j // 2
            angle = (start + p) / max_wavelength ** (2 * i / dim)
            table[p, j] = np.sin(angle) if j % 2 == 0 else np.cos(angle)
    return table


class SinusoidalPositionalEncodingTest(LayerTestCase):
    def test_keras_harness(self):
        self.run_keras_layer_test(
            SinusoidalPositionalEncoding,
            {"max_wavelength": 10000},
            input_shape=(2, 7, 6),
            expected_output_shape=(2, 7, 6),
            expected_num_trainable_weights=0,
            supports_masking=True,
            run_training_check=False,
        )

    def test_equals_paper_formula(self):
        for dim in (8, 7):
            out = SinusoidalPositionalEncoding()(np.zeros((1, 12, dim), "float32"))
            np.testing.assert_allclose(out[0], paper_sinusoid(12, dim), atol=1e-5)

    def test_start_index_offsets_positions(self):
        layer = SinusoidalPositionalEncoding()
        full = layer(np.zeros((1, 10, 8), "float32"))
        for start in (3, keras.ops.convert_to_tensor(3)):
            tail = layer(np.zeros((1, 7, 8), "float32"), start_index=start)
            np.testing.assert_allclose(tail, full[:, 3:], atol=1e-6)
        np.testing.assert_allclose(
            layer(np.zeros((1, 2, 8), "float32"), start_index=5000)[0],
            paper_sinusoid(2, 8, start=5000), atol=1e-3,
        )

    def test_no_length_limit_and_adds_to_inputs(self):
        x = random_inputs(1, 3000, 4)
        out = SinusoidalPositionalEncoding()(x)
        np.testing.assert_allclose((out - x)[0], paper_sinusoid(3000, 4), atol=1e-3)

    def test_half_precision_agrees(self):
        x = random_inputs(2, 50, 16)
        self.assert_half_precision_agrees(
            lambda dtype: SinusoidalPositionalEncoding(dtype=dtype),
            lambda layer: layer(x),
        )

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "max_wavelength"):
            SinusoidalPositionalEncoding(max_wavelength=0)
        with self.assertRaisesRegex(ValueError, "start_index"):
            SinusoidalPositionalEncoding()(np.zeros((1, 2, 4)), start_index=-1)


class LearnedPositionalEncodingTest(LayerTestCase):
    def test_keras_harness(self):
        self.run_keras_layer_test(
            LearnedPositionalEncoding,
            {"max_length": 10},
            input_shape=(2, 7, 6),
            expected_output_shape=(2, 7, 6),
            expected_num_trainable_weights=1,
            supports_masking=True,
        )

    def test_adds_table_rows_with_start_index(self):
        layer = LearnedPositionalEncoding(10)
        out = layer(np.zeros((1, 4, 3), "float32"), start_index=2)
        table = keras.ops.convert_to_numpy(layer.position_embeddings)
        np.testing.assert_allclose(out[0], table[2:6])

    def test_too_long_is_a_clear_error(self):
        layer = LearnedPositionalEncoding(5)
        with self.assertRaisesRegex(ValueError, "max_length=5"):
            layer(np.zeros((1, 6, 3), "float32"))
        layer = LearnedPositionalEncoding(5)
        layer(np.zeros((1, 5, 3), "float32"))
        with self.assertRaisesRegex(ValueError, "max_length=5"):
            layer(np.zeros((1, 2, 3), "float32"), start_index=4)
        with self.assertRaisesRegex(ValueError, "max_length"):
            LearnedPositionalEncoding(0)


class TokenAndPositionEmbeddingTest(LayerTestCase):
    def test_keras_harness(self):
        for positional in ("sinusoidal", "learned"):
            self.run_keras_layer_test(
                TokenAndPositionEmbedding,
                {
                    "vocabulary_size": 20,
                    "embedding_dim": 8,
                    "max_length": 12,
                    "positional": positional,
                    "dropout": 0.1,
                },
                input_data=np.array([[3, 4, 5, 0], [1, 2, 0, 0]], "int32"),
                expected_output_shape=(2, 4, 8),
                expected_num_trainable_weights=(
                    1 if positional == "sinusoidal" else 2
                ),
                expected_num_seed_generators=1,
                supports_masking=True,
                expected_mask_shape=(2, 4),
            )

    def test_scaled_embedding_plus_sinusoid_and_mask(self):
        layer = TokenAndPositionEmbedding(10, 4)
        ids = np.array([[5, 7, 0]])
        out = layer(ids)
        table = keras.ops.convert_to_numpy(layer.embeddings)
        expected = table[ids[0]] * 2.0 + paper_sinusoid(3, 4)
        np.testing.assert_allclose(out[0], expected, atol=1e-5)
        mask = layer.compute_mask(ids)
        np.testing.assert_array_equal(mask, [[True, True, False]])

    def test_start_index(self):
        layer = TokenAndPositionEmbedding(10, 4)
        full = layer(np.array([[5, 7, 8]]))
        step = layer(np.array([[8]]), start_index=2)
        np.testing.assert_allclose(step[0, 0], full[0, 2], atol=1e-6)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="max_length"):
            TokenAndPositionEmbedding(10, 4, positional="learned")
        with pytest.raises(ValueError, match="positional"):
            TokenAndPositionEmbedding(10, 4, positional="rotary")
