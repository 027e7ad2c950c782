import keras
import numpy as np
import pytest
from keras import ops

from keras_xformer.layers import MultiHeadAttention
from tests.helpers import LayerTestCase
from tests.helpers import random_inputs


def to_numpy(x):
    # `np.asarray` fails on PyTorch tensors that require grad.
    return np.asarray(keras.ops.convert_to_numpy(x))

B, T, D, H = 2, 6, 16, 4
PADDING = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)


def paired_with_keras(**kwargs):
    """Ours and keras.layers.MultiHeadAttention with the same weights."""
    x = random_inputs(B, T, D)
    ours = MultiHeadAttention(H, D // H, **kwargs)
    theirs = keras.layers.MultiHeadAttention(H, D // H, **kwargs)
    ours(x, x)
    theirs(x, x)
    ours.set_weights(theirs.get_weights())
    return ours, theirs, x


class MultiHeadAttentionTest(LayerTestCase):
    def test_keras_harness(self):
        self.run_keras_layer_test(
            MultiHeadAttention,
            {"num_heads": 2, "key_dim": 4},
            input_shape={"query_shape": (2, 8, 16), "value_shape": (2, 4, 16)},
            expected_output_shape=(2, 8, 16),
            expected_num_trainable_weights=8,
            expected_num_seed_generators=0,
            supports_masking=True,
            # The harness trains `layer(x)` with one input; training is
            # covered by the drop-in and XLA tests below.
            run_training_check=False,
        )
        self.run_keras_layer_test(
            MultiHeadAttention,
            {"num_heads": 2, "key_dim": 4, "value_dim": 3, "use_bias": False,
             "dropout": 0.5, "output_shape": 5},
            input_shape={"query_shape": (2, 8, 16), "value_shape": (2, 4, 12)},
            expected_output_shape=(2, 8, 5),
            expected_num_trainable_weights=4,
            expected_num_seed_generators=1,
            supports_masking=True,
            # The harness trains `layer(x)` with one input; training is
            # covered by the drop-in and XLA tests below.
            run_training_check=False,
        )

    def test_equals_keras_layer_with_same_weights(self):
        ours, theirs, x = paired_with_keras()
        y = random_inputs(B, 9, D)
        cases = [
            dict(query=x, value=x),
            dict(query=x, value=x, use_causal_mask=True),
            dict(query=x, value=x, value_mask=PADDING),
            dict(query=x, value=y),
            dict(query=x, value=y, key=random_inputs(B, 9, D)),
            dict(query=x, value=x, attention_mask=np.tril(np.ones((B, T, T)))),
        ]
        for kwargs in cases:
            a, sa = ours(**kwargs, return_attention_scores=True)
            b, sb = theirs(**kwargs, return_attention_scores=True)
            np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-5)
            np.testing.assert_allclose(to_numpy(sa), to_numpy(sb), atol=1e-6)
        # Padded query rows are garbage either way; real rows agree.
        a = ours(x, x, query_mask=PADDING, value_mask=PADDING)
        b = theirs(x, x, query_mask=PADDING, value_mask=PADDING)
        np.testing.assert_allclose(
            to_numpy(a)[PADDING], to_numpy(b)[PADDING], atol=1e-5
        )

    def test_drop_in_for_keras_functional_graph(self):
        def build(mha_cls):
            keras.utils.set_random_seed(1)
            q = keras.Input((T, D))
            v = keras.Input((T + 2, D))
            out, scores = mha_cls(num_heads=H, key_dim=8, value_dim=6)(
                q, v, return_attention_scores=True
            )
            pooled = keras.layers.GlobalAveragePooling1D()(out)
            return keras.Model([q, v], [keras.layers.Dense(1)(pooled), scores])

        theirs, ours = build(keras.layers.MultiHeadAttention), build(MultiHeadAttention)
        self.assertEqual(ours.count_params(), theirs.count_params())
        x = [random_inputs(8, T, D), random_inputs(8, T + 2, D)]
        # Keras 3.15 declares its symbolic scores as (B, H, Tq, Tq); the
        # real ones (and ours, symbolic and real) are (B, H, Tq, Tk).
        self.assertEqual(ours.output_shape, [(None, 1), (None, H, T, T + 2)])
        for a, b in zip(ours.predict(x, verbose=0), theirs.predict(x, verbose=0)):
            self.assertEqual(a.shape, b.shape)
        y = random_inputs(8, 1)
        ours.compile("adam", loss=["mse", None])
        history = ours.fit(x, y, epochs=3, verbose=0)
        self.assertLess(history.history["loss"][-1], history.history["loss"][0])

    def test_causal_mask_hides_the_future(self):
        layer = MultiHeadAttention(H, 4)
        x = random_inputs(B, T, D)
        base = to_numpy(layer(x, x, use_causal_mask=True))
        for t in range(T - 1):
            changed = x.copy()
            changed[:, t + 1 :] = random_inputs(B, T - t - 1, D)
            out = to_numpy(layer(changed, changed, use_causal_mask=True))
            np.testing.assert_allclose(to_numpy(out[:, : t + 1]), to_numpy(base[:, : t + 1]), atol=1e-5)
            self.assertGreater(np.abs(out[:, t + 1 :] - base[:, t + 1 :]).max(), 1e-3)

    def test_padding_is_invisible(self):
        layer = MultiHeadAttention(H, 4)
        x = random_inputs(B, T, D)
        y = random_inputs(B, T, D)
        out, scores = layer(x, y, value_mask=PADDING, return_attention_scores=True)
        changed = y.copy()
        changed[~PADDING] = 100.0 * random_inputs(int((~PADDING).sum()), D)
        out2 = layer(x, changed, value_mask=PADDING)
        np.testing.assert_allclose(to_numpy(out), to_numpy(out2), atol=1e-5)
        scores = to_numpy(scores)
        np.testing.assert_array_equal(scores[0, :, :, 4:], 0.0)
        np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)

    def test_keras_implicit_mask_is_read(self):
        ids = keras.Input((T,), dtype="int32")
        h = keras.layers.Embedding(10, D, mask_zero=True)(ids)
        out = MultiHeadAttention(H, 4)(h, h)
        model = keras.Model(ids, out)
        tokens = np.array([[1, 2, 3, 0, 0, 0]])
        changed = np.array([[1, 2, 3, 0, 0, 0]])
        base = model(tokens)
        # Mask read: result equals an explicit key mask.
        layer = model.layers[-1]
        emb = model.layers[1](tokens)
        explicit = layer(emb, emb, query_mask=tokens != 0, value_mask=tokens != 0)
        np.testing.assert_allclose(to_numpy(base), to_numpy(explicit), atol=1e-6)
        del changed

    def test_fully_masked_rows_are_finite_in_every_dtype(self):
        x = random_inputs(B, T, D) * 30.0
        mask = np.zeros((B, T, T), bool)
        mask[:, : T // 2] = True
        for dtype in ("float32", "float16", "bfloat16", "mixed_float16",
                      "mixed_bfloat16"):
            layer = MultiHeadAttention(H, 4, dtype=dtype)
            out, scores = layer(x, x, attention_mask=mask,
                                return_attention_scores=True)
            out = keras.ops.convert_to_numpy(ops.cast(out, "float32"))
            self.assertTrue(np.all(np.isfinite(out)), dtype)
            self.assertTrue(np.all(np.isfinite(
                keras.ops.convert_to_numpy(ops.cast(scores, "float32")))), dtype)

    def test_half_precision_agrees_with_float32(self):
        x = random_inputs(B, T, D)
        y = random_inputs(B, T + 3, D)
        mask = np.ones((B, T + 3), bool)
        mask[0, -3:] = False
        self.assert_half_precision_agrees(
            lambda dtype: MultiHeadAttention(H, 4, dtype=dtype),
            lambda layer: to_numpy(layer(x, x, use_causal_mask=True)),
        )
        self.assert_half_precision_agrees(
            lambda dtype: MultiHeadAttention(H, 4, dtype=dtype),
            lambda layer: to_numpy(layer(x, y, value_mask=mask)),
        )

    def test_cache_decoding_equals_full_causal_pass(self):
        layer = MultiHeadAttention(H, 4)
        x = random_inputs(B, T, D)
        full = to_numpy(layer(x, x, use_causal_mask=True))
        cache = np.zeros((B, 2, T, H, 4), "float32")
        for t in range(T):
            step = x[:, t : t + 1]
            out, cache = layer(step, step, use_causal_mask=True, cache=cache,
                               cache_update_index=t)
            np.testing.assert_allclose(to_numpy(out[:, 0]), to_numpy(full[:, t]), atol=1e-5)
        # Two tokens at a time, with a tensor index, give the same.
        cache = np.zeros((B, 2, T, H, 4), "float32")
        for t in range(0, T, 2):
            step = x[:, t : t + 2]
            out, cache = layer(step, step, use_causal_mask=True, cache=cache,
                               cache_update_index=ops.convert_to_tensor(t))
            np.testing.assert_allclose(to_numpy(out), to_numpy(full[:, t : t + 2]), atol=1e-5)

    def test_cross_attention_cache_is_reused(self):
        layer = MultiHeadAttention(H, 4)
        x, memory = random_inputs(B, T, D), random_inputs(B, 9, D)
        memory_mask = np.ones((B, 9), bool)
        memory_mask[1, 5:] = False
        full = layer(x, memory, value_mask=memory_mask)
        cache = layer.compute_cache(memory)
        out, same_cache = layer(x, None, value_mask=memory_mask, cache=cache)
        np.testing.assert_allclose(to_numpy(out), to_numpy(full), atol=1e-5)
        np.testing.assert_array_equal(to_numpy(same_cache), to_numpy(cache))

    def test_split_cache_decoding_equals_full_pass_and_stacked_cache(self):
        layer = MultiHeadAttention(H, 4)
        x, memory = random_inputs(B, T, D), random_inputs(B, 9, D)
        full = to_numpy(layer(x, x, use_causal_mask=True))
        stacked = np.zeros((B, 2, T, H, 4), "float32")
        split = (np.zeros((B, H, T, 4), "float32"), np.zeros((B, H, T, 4), "float32"))
        for t in range(T):
            step = x[:, t : t + 1]
            out, split = layer(step, step, use_causal_mask=True, cache=split,
                               cache_update_index=t)
            expected, stacked = layer(step, step, use_causal_mask=True, cache=stacked,
                                      cache_update_index=t)
            np.testing.assert_allclose(to_numpy(out[:, 0]), to_numpy(full[:, t]), atol=1e-5)
            np.testing.assert_allclose(to_numpy(out), to_numpy(expected), atol=1e-6)
        self.assertIsInstance(split, tuple)
        # The same keys and values, heads first.
        np.testing.assert_allclose(
            np.stack([to_numpy(c) for c in split], 1),
            np.transpose(to_numpy(stacked), (0, 1, 3, 2, 4)), atol=1e-6)
        # Two tokens at a time, with scores.
        split = (np.zeros((B, H, T, 4), "float32"), np.zeros((B, H, T, 4), "float32"))
        for t in range(0, T, 2):
            step = x[:, t : t + 2]
            out, split, scores = layer(step, step, use_causal_mask=True, cache=split,
                                       cache_update_index=ops.convert_to_tensor(t),
                                       return_attention_scores=True)
            np.testing.assert_allclose(to_numpy(out), to_numpy(full[:, t : t + 2]), atol=1e-5)
            self.assertEqual(tuple(scores.shape), (B, H, 2, T))
        # Cross-attention over a split cache of the memory.
        memory_mask = np.ones((B, 9), bool)
        memory_mask[1, 5:] = False
        cross = layer.compute_cache(memory, layout="split")
        self.assertEqual([tuple(c.shape) for c in cross], [(B, H, 9, 4)] * 2)
        out, same = layer(x, None, value_mask=memory_mask, cache=cross)
        np.testing.assert_allclose(
            to_numpy(out), to_numpy(layer(x, memory, value_mask=memory_mask)), atol=1e-5)
        self.assertIs(same[0], cross[0])

    def test_reused_cache_serves_a_multiple_of_its_batch(self):
        # Beam search: g query rows per source share one cross-attention
        # cache, with the results of g copies of it.
        g, S = 3, 9
        layer = MultiHeadAttention(H, 4)
        memory = random_inputs(B, S, D)
        memory_mask = np.ones((B, S), bool)
        memory_mask[1, 5:] = False
        x = random_inputs(B * g, 2, D)
        query_mask = np.ones((B * g, 2), bool)
        query_mask[4, 1] = False
        repeated_memory = np.repeat(to_numpy(memory), g, axis=0)
        repeated_mask = np.repeat(memory_mask, g, axis=0)
        expected, expected_scores = layer(
            x, repeated_memory, query_mask=query_mask, value_mask=repeated_mask,
            return_attention_scores=True)
        for layout in ("split", "stacked"):
            cache = layer.compute_cache(memory, layout=layout)
            # The source mask at the cache's batch, or repeated per query row.
            for mask in (memory_mask, repeated_mask):
                out, _, scores = layer(x, None, query_mask=query_mask, value_mask=mask,
                                       cache=cache, return_attention_scores=True)
                np.testing.assert_allclose(to_numpy(out), to_numpy(expected), atol=1e-5)
                np.testing.assert_allclose(
                    to_numpy(scores), to_numpy(expected_scores), atol=1e-6)
            # An explicit (batch, Tq, Tv) mask per query row.
            out, _ = layer(x, None, attention_mask=np.repeat(repeated_mask[:, None], 2, 1),
                           cache=cache)
            np.testing.assert_allclose(
                to_numpy(out),
                to_numpy(layer(x, repeated_memory, value_mask=repeated_mask)), atol=1e-5)
        cache = layer.compute_cache(memory, layout="split")
        with pytest.raises(ValueError, match="multiple of it"):
            layer(random_inputs(B * g + 1, 1, D), None, cache=cache)
        with pytest.raises(ValueError, match="use_causal_mask"):
            layer(x, None, cache=cache, use_causal_mask=True)

    def test_bad_split_cache_is_a_clear_error(self):
        layer = MultiHeadAttention(H, 4)
        x = random_inputs(B, 1, D)
        layer(x, x)
        with pytest.raises(ValueError, match="layout"):
            layer.compute_cache(x, layout="heads_first")
        with pytest.raises(ValueError, match="split `cache`"):
            # Stacked-layout tensors passed as a pair.
            layer(x, x, cache=(np.zeros((B, T, H, 4)), np.zeros((B, T, H, 4))),
                  cache_update_index=0)
        with pytest.raises(ValueError, match="split `cache`"):
            layer(x, x, cache=(np.zeros((B, H, T, 4)),), cache_update_index=0)

    def test_fit_with_xla(self):
        q = keras.Input((T, D))
        out = MultiHeadAttention(H, 4, dropout=0.1)(q, q, use_causal_mask=True)
        model = keras.Model(q, out)
        self.assert_fits_with_xla(model, random_inputs(4, T, D), random_inputs(4, T, D))

    def test_bad_input_is_a_clear_error(self):
        with pytest.raises(ValueError, match="num_heads"):
            MultiHeadAttention(0, 4)
        with pytest.raises(ValueError, match="num_heads"):
            MultiHeadAttention(-2, 4)
        with pytest.raises(ValueError, match="key_dim"):
            MultiHeadAttention(2, 0)
        layer = MultiHeadAttention(H, 4)
        x = random_inputs(B, T, D)
        with pytest.raises(ValueError, match="attention_mask"):
            layer(x, x, attention_mask=np.ones((B, T, T + 1), bool))
        with pytest.raises(ValueError, match="value_mask"):
            layer(x, x, value_mask=np.ones((B, T + 2), bool))
        with pytest.raises(ValueError, match="attention_mask"):
            layer(x, x, attention_mask=np.ones((B, 1, 1, T, T), bool))
        with pytest.raises(ValueError, match="value_dim == key_dim"):
            MultiHeadAttention(H, 4, value_dim=2).compute_cache(x)
        with pytest.raises(ValueError, match="batch, length, dim"):
            MultiHeadAttention(H, 4)(random_inputs(B, T), random_inputs(B, T))


@pytest.mark.parametrize("floatx", ["float32", "float16"])
def test_masking_keeps_where_semantics(floatx):
    """`_attention_weights` masks with a minimum against a bound made from
    the mask (an XNNPACK op in TFLite, where a `where` was not): the
    weights of `where(mask, logits, -1e9)`, a fully masked row uniform and
    finite, also when `floatx` is float16 (where -1e9 would be -inf)."""
    from keras_xformer.layers.attention import _attention_weights

    saved = keras.config.floatx()
    keras.config.set_floatx(floatx)
    try:
        logits = np.array([[[[1.0, 5.0, -2.0, 3e4], [7.0, -7.0, 0.5, 2.0]]]], "float32")
        mask = np.array([[[True, False, True, False], [False, False, False, False]]])
        weights, dropped = _attention_weights(
            ops.convert_to_tensor(logits), ops.convert_to_tensor(mask), "float32", None, False)
    finally:
        keras.config.set_floatx(saved)
    weights = to_numpy(weights)[0, 0]
    expected = np.exp([1.0, -2.0]) / np.exp([1.0, -2.0]).sum()
    np.testing.assert_allclose(weights[0], [expected[0], 0.0, expected[1], 0.0], rtol=1e-6)
    np.testing.assert_allclose(weights[1], 0.25)  # fully masked: uniform, not NaN
    np.testing.assert_array_equal(to_numpy(dropped)[0, 0], weights)
