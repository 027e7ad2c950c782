"""Keras' model-level features on our layers: quantize, LoRA, dtype policy
maps, summary(), and the attention paths (fused projections, fused kernel)
keeping their guarantees."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_xformer.layers import MultiHeadAttention
from keras_xformer.layers import TransformerDecoderBlock
from keras_xformer.layers import TransformerEncoder
from keras_xformer.layers import TransformerEncoderBlock
from keras_xformer.layers import attention as attention_module
from tests.helpers import LayerTestCase
from tests.helpers import random_inputs


def to_numpy(x):
    # `np.asarray` fails on PyTorch tensors that require grad.
    return np.asarray(keras.ops.convert_to_numpy(x))

B, T, D, H = 2, 6, 16, 4


def encoder_model(dtype=None, name="encoder"):
    keras.utils.set_random_seed(3)
    ids = keras.Input((T,), dtype="int32")
    x = keras.layers.Embedding(20, D, mask_zero=True)(ids)
    x = TransformerEncoder(2, H, 32, dropout=0.0, dtype=dtype, name=name)(x)
    x = TransformerDecoderBlock(H, 32, dropout=0.0, name="decoder")(x, x)
    return keras.Model(ids, keras.layers.Dense(5, name="head")(x))


def token_ids():
    ids = np.random.default_rng(0).integers(1, 20, (B, T))
    ids[0, 4:] = 0
    return ids


class QuantizeTest(LayerTestCase):
    def test_int8_quantizes_every_projection_and_round_trips(self):
        model = encoder_model()
        ids = token_ids()
        expected = model.predict(ids, verbose=0)
        model.quantize("int8")
        kernels = [
            layer for layer in model._flatten_layers()
            if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))
        ]
        # 2 encoder blocks x (4 attention + 2 feed-forward), a decoder block
        # with 8 attention + 2 feed-forward, the head.
        self.assertLen(kernels, 2 * 6 + 10 + 1)
        for layer in kernels:
            self.assertEqual(layer.quantization_mode, "int8", layer.path)
            self.assertEqual(keras.backend.standardize_dtype(layer._kernel.dtype), "int8")
        actual = model.predict(ids, verbose=0)
        self.assertLess(np.abs(actual - expected).max(), 0.05 * np.abs(expected).max())
        restored = self.assert_model_roundtrip(model, ids)
        self.assertEqual(
            restored.get_layer("encoder").blocks[0].self_attention._query_dense.quantization_mode,
            "int8",
        )

    def test_quantized_projections_do_not_fuse(self):
        layer = MultiHeadAttention(H, 4)
        x = random_inputs(B, T, D)
        expected = layer(x, x)
        for sub in (layer._query_dense, layer._key_dense, layer._value_dense,
                    layer._output_dense):
            sub.quantize("int8")
        calls = []
        original = attention_module._concatenate_projections
        attention_module._concatenate_projections = lambda *a: calls.append(1) or original(*a)
        try:
            actual = layer(x, x)
        finally:
            attention_module._concatenate_projections = original
        self.assertEqual(calls, [])
        self.assertLess(float(ops.max(ops.abs(actual - expected))), 0.05)

    def test_int8_under_mixed_bfloat16_agrees_with_float32(self):
        x = random_inputs(B, T, D)

        def make(dtype):
            layer = MultiHeadAttention(H, 4, dtype=dtype)
            layer(x, x)
            return layer

        reference = make("float32")
        # Keras refuses int8 with a float16 compute dtype.
        half = make("mixed_bfloat16")
        half.set_weights(reference.get_weights())
        for layer in (reference, half):
            for sub in (layer._query_dense, layer._key_dense,
                        layer._value_dense, layer._output_dense):
                sub.quantize("int8")
        a = to_numpy(reference(x, x, use_causal_mask=True))
        b = to_numpy(ops.cast(half(x, x, use_causal_mask=True), "float32"))
        self.assertLess(np.abs(a - b).max(), 8e-2 * max(1.0, np.abs(a).max()))

    def test_dtype_policy_map_reaches_sublayers(self):
        int8 = keras.dtype_policies.QuantizedDTypePolicy("int8", "float32")
        policy_map = keras.dtype_policies.DTypePolicyMap()
        policy_map["block/self_attention/query"] = int8
        policy_map["block/feed_forward/inner"] = int8
        block = TransformerEncoderBlock(H, 32, dtype=policy_map, name="block")
        block.build((None, T, D))
        self.assertEqual(block.self_attention._query_dense.quantization_mode, "int8")
        self.assertEqual(block.feed_forward.inner_dense.quantization_mode, "int8")
        self.assertIsNone(block.self_attention._key_dense.quantization_mode)
        self.assertEqual(block(random_inputs(B, T, D)).shape, (B, T, D))


class LoraTest(LayerTestCase):
    def test_only_adapters_train_and_save_load_keeps_them(self):
        model = encoder_model()
        ids = token_ids()
        before = model.predict(ids, verbose=0)
        frozen = [v for v in model.weights if "lora" not in v.path]
        chosen = model.get_layer("encoder").enable_lora(2)
        model.get_layer("decoder").enable_lora(2, target_layer_names=["query", "value"])
        self.assertLen(chosen, 2 * 6)
        trainable = {v.path for v in model.trainable_variables}
        # Keras' own Embedding and Dense around ours are not touched.
        outside = {v.path for name in ("head", "embedding")
                   for v in model.get_layer(name).trainable_variables}
        self.assertTrue(all("lora" in p for p in trainable - outside), trainable)
        # 12 encoder projections and 4 decoder ones (query and value of
        # both attentions), an A and a B each.
        self.assertLen(trainable - outside, 2 * (12 + 4))
        # Zero-initialized B: the model starts where it was.
        np.testing.assert_allclose(model.predict(ids, verbose=0), before, atol=1e-5)
        values = [np.array(v) for v in frozen]
        model.compile("adam", "mse")
        model.fit(ids, np.ones((B, T, 5)), epochs=3, verbose=0)
        after = model.predict(ids, verbose=0)
        self.assertGreater(np.abs(after - before).max(), 1e-4)
        for v, old in zip(frozen, values):
            if not v.path.startswith(("head", "embedding")):
                np.testing.assert_array_equal(np.array(v), old, v.path)
        restored = self.assert_model_roundtrip(model, ids, atol=1e-5)
        # Reloaded, the adapters are back (fresh), the rest still frozen.
        trainable = {v.path for v in restored.trainable_variables}
        self.assertTrue(all("lora" in p or p.startswith(("head", "embedding"))
                            for p in trainable), trainable)
        self.assertLen(trainable, len({v.path for v in model.trainable_variables}))

    def test_bad_lora_arguments(self):
        block = TransformerEncoderBlock(H, 32)
        with pytest.raises(ValueError, match="Build"):
            block.enable_lora(2)
        block.build((None, T, D))
        with pytest.raises(ValueError, match="rank"):
            block.enable_lora(0)
        with pytest.raises(ValueError, match="target_layer_names"):
            block.enable_lora(2, target_layer_names=["nothing"])

    def test_attention_layer_lora_keeps_fused_projections_exact(self):
        layer = MultiHeadAttention(H, 4)
        x = random_inputs(B, T, D)
        layer(x, x)
        layer.enable_lora(2)
        for sub in (layer._query_dense, layer._value_dense):
            sub.lora_kernel_b.assign(np.random.default_rng(1).normal(
                size=sub.lora_kernel_b.shape).astype("float32"))
        fused = layer(x, x)
        layer._fusable = False
        separate = layer(x, x)
        np.testing.assert_allclose(to_numpy(fused), to_numpy(separate), atol=1e-5)


class ConventionsTest(LayerTestCase):
    def test_summary_names_the_sublayers(self):
        block = TransformerDecoderBlock(H, 32, name="block")
        block.build((None, T, D), (None, T + 1, D))
        names = [layer.path for layer in block._flatten_layers()]
        for name in ("block/self_attention/query", "block/cross_attention/key",
                     "block/feed_forward/inner", "block/self_attention_norm"):
            self.assertIn(name, names)
        lines = []
        inputs = keras.Input((T, D))
        keras.Model(inputs, TransformerEncoderBlock(H, 32, name="block_0")(inputs)).summary(
            print_fn=lines.append
        )
        text = "\n".join(lines)
        self.assertIn("block_0", text)
        self.assertIn("(TransformerEncoderBlock)", text)


class MaskTest(LayerTestCase):
    def test_callers_keras_masks_survive_the_call(self):
        # Keras' layer drops them; a second attention reading the same
        # encoder output would then attend to its padding.
        x = keras.layers.Embedding(10, D, mask_zero=True)(np.array([[1, 2, 3, 0, 0]]))
        memory = keras.layers.Embedding(10, D, mask_zero=True)(np.array([[4, 5, 0]]))
        MultiHeadAttention(H, 4)(x, memory)
        self.assertIsNotNone(keras.src.backend.get_keras_mask(x))
        self.assertIsNotNone(keras.src.backend.get_keras_mask(memory))


class FusedKernelTest(LayerTestCase):
    """`ops.dot_product_attention` path (what runs on GPU/TPU), forced on
    this CPU: same outputs, finite fully-masked rows, float32 agreement."""

    def setUp(self):
        super().setUp()
        # Fixed weights: with inputs scaled by 30 the softmaxes are nearly
        # one-hot, and unseeded weights made a near-tie flip in float16 now
        # and then (about one run in eight on PyTorch).
        keras.utils.set_random_seed(0)
        self._saved = attention_module._FUSED_BY_DEFAULT
        attention_module._FUSED_BY_DEFAULT = True

    def tearDown(self):
        attention_module._FUSED_BY_DEFAULT = self._saved
        super().tearDown()

    def test_same_outputs_and_finite_masked_rows(self):
        x = random_inputs(B, T, D) * 30.0
        mask = np.zeros((B, T, T), bool)
        mask[:, : T // 2] = True
        for dtype in ("float32", "mixed_float16", "mixed_bfloat16"):
            layer = MultiHeadAttention(H, 4, dtype=dtype)
            fused = layer(x, x, attention_mask=mask)
            # Asking for scores takes the einsum path.
            einsum, _ = layer(x, x, attention_mask=mask, return_attention_scores=True)
            fused = to_numpy(ops.cast(fused, "float32"))
            self.assertTrue(np.all(np.isfinite(fused)), dtype)
            np.testing.assert_allclose(
                fused, to_numpy(ops.cast(einsum, "float32")),
                # float32: 1e-5 of the outputs' scale (they reach about 50).
                atol=(1e-5 if dtype == "float32" else 0.1) * np.abs(fused).max(),
            )

    def test_value_dim_unlike_key_dim_takes_the_einsum_path(self):
        # The fused kernels take one head size: on a GPU (an H200, JAX)
        # value_dim 3 with key_dim 4 failed inside
        # `jax.nn.dot_product_attention`. Such a layer runs our einsum path
        # on every device; forcing flash on it is a clear error.
        x, memory = random_inputs(B, T, D), random_inputs(B, 4, 12)
        layer = MultiHeadAttention(2, 4, value_dim=3, output_shape=5)
        calls = []
        original = attention_module._fused_kernel_attention
        attention_module._fused_kernel_attention = lambda *a: calls.append(a) or original(*a)
        try:
            outputs = to_numpy(layer(x, memory))
        finally:
            attention_module._fused_kernel_attention = original
        self.assertEqual(calls, [])
        self.assertEqual(outputs.shape, (B, T, 5))
        attention_module._FUSED_BY_DEFAULT = False
        np.testing.assert_allclose(outputs, to_numpy(layer(x, memory)), atol=1e-6)
        with self.assertRaisesRegex(ValueError, "value_dim"):
            MultiHeadAttention(2, 4, value_dim=3, flash_attention=True)(x, memory)

    def test_half_precision_agrees_with_float32(self):
        x = random_inputs(B, T, D)
        self.assert_half_precision_agrees(
            lambda dtype: MultiHeadAttention(H, 4, dtype=dtype),
            lambda layer: to_numpy(layer(x, x, use_causal_mask=True)),
        )

    def test_float32_softmax_under_float16(self):
        # Logits whose float16 exponentials would overflow: a float16
        # softmax gives inf/NaN, ours stays finite and close to float32.
        x = random_inputs(B, T, D) * 60.0
        self.assert_half_precision_agrees(
            lambda dtype: MultiHeadAttention(H, 4, dtype=dtype),
            lambda layer: to_numpy(layer(x, x)),
            policies=("mixed_float16",), tolerances={"mixed_float16": 5e-2},
        )
