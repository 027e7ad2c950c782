import keras
import numpy as np
import pytest

from keras_xformer.layers import TokenAndPositionEmbedding
from keras_xformer.layers import TransformerDecoder
from keras_xformer.layers import TransformerDecoderBlock
from keras_xformer.layers import TransformerEncoder
from keras_xformer.layers import TransformerEncoderBlock
from tests.helpers import LayerTestCase
from tests.helpers import random_inputs

B, T, S, D, H, F = 2, 5, 7, 16, 4, 32
SOURCE_PADDING = np.array([[1] * 4 + [0] * 3, [1] * 7], bool)


def decode_step_by_step(block, x, memory, self_cache):
    """Runs `block` one target position at a time with its caches; yields
    `(t, output, cross_attention_cache)` after each step."""
    cross_cache = None
    for t in range(x.shape[1]):
        out, self_cache, cross_cache = block(
            x[:, t : t + 1], memory if t == 0 else None,
            encoder_padding_mask=SOURCE_PADDING,
            self_attention_cache=self_cache,
            cross_attention_cache=cross_cache,
            cache_update_index=t,
        )
        yield t, out, cross_cache

class TransformerEncoderBlockTest(LayerTestCase):
    def test_keras_harness(self):
        for norm_first in (False, True):
            self.run_keras_layer_test(
                TransformerEncoderBlock,
                {"num_heads": H, "intermediate_dim": F, "norm_first": norm_first},
                input_shape=(B, T, D),
                expected_output_shape=(B, T, D),
                expected_num_trainable_weights=16,
                expected_num_seed_generators=2,
                supports_masking=True,
            )

    def test_post_ln_matches_the_paper(self):
        """LN(x + MHA(x)) then LN(y + FFN(y)), computed by hand."""
        block = TransformerEncoderBlock(H, F, dropout=0.0)
        # A backend tensor, so that `x + ...` adds on every backend (numpy
        # + a torch tensor is not an addition).
        x = keras.ops.convert_to_tensor(random_inputs(B, T, D))
        out = block(x)
        y = block.self_attention_norm(x + block.self_attention(x, x))
        y = block.feed_forward_norm(y + block.feed_forward(y))
        np.testing.assert_allclose(out, y, atol=1e-5)
        pre = TransformerEncoderBlock(H, F, dropout=0.0, norm_first=True)
        out = pre(x)
        n = pre.self_attention_norm(x)
        y = x + pre.self_attention(n, n)
        y = y + pre.feed_forward(pre.feed_forward_norm(y))
        np.testing.assert_allclose(out, y, atol=1e-5)

    def test_padding_is_invisible_and_mask_flows(self):
        block = TransformerEncoderBlock(H, F)
        x = random_inputs(B, S, D)
        out = np.asarray(block(x, padding_mask=SOURCE_PADDING))
        changed = x.copy()
        changed[~SOURCE_PADDING] = 50.0
        out2 = np.asarray(block(changed, padding_mask=SOURCE_PADDING))
        np.testing.assert_allclose(out[SOURCE_PADDING], out2[SOURCE_PADDING], atol=1e-5)
        # Implicit Keras mask from an embedding gives the same result.
        ids = keras.Input((None,), dtype="int32")
        h = keras.layers.Embedding(20, D, mask_zero=True)(ids)
        model = keras.Model(ids, TransformerEncoder(1, H, F)(h))
        tokens = np.array([[3, 4, 5, 0, 0], [3, 4, 5, 6, 7]])
        emb = model.layers[1](tokens)
        explicit = model.layers[2](emb, padding_mask=tokens != 0)
        np.testing.assert_allclose(model(tokens), explicit, atol=1e-6)

    def test_scores(self):
        block = TransformerEncoderBlock(H, F)
        out, scores = block(random_inputs(B, S, D), padding_mask=SOURCE_PADDING,
                            return_attention_scores=True)
        self.assertEqual(tuple(scores.shape), (B, H, S, S))
        np.testing.assert_array_equal(np.asarray(scores)[0, :, :4, 4:], 0.0)

    def test_half_precision_agrees(self):
        x = random_inputs(B, S, D)
        self.assert_half_precision_agrees(
            lambda dtype: TransformerEncoderBlock(H, F, dtype=dtype),
            lambda layer: layer(x, padding_mask=SOURCE_PADDING),
        )

    def test_bad_input(self):
        with pytest.raises(ValueError, match="not divisible by num_heads=3"):
            TransformerEncoderBlock(3, F)(random_inputs(B, T, D))
        with pytest.raises(ValueError, match="num_heads"):
            TransformerEncoderBlock(0, F)
        with pytest.raises(ValueError, match="intermediate_dim"):
            TransformerEncoderBlock(2, -1)
        with pytest.raises(ValueError, match="padding_mask|query_mask"):
            TransformerEncoderBlock(H, F)(random_inputs(B, T, D),
                                          padding_mask=np.ones((B, T + 1), bool))


class TransformerDecoderBlockTest(LayerTestCase):
    def test_keras_harness_decoder_only(self):
        self.run_keras_layer_test(
            TransformerDecoderBlock,
            {"num_heads": H, "intermediate_dim": F},
            input_shape=(B, T, D),
            expected_output_shape=(B, T, D),
            expected_num_trainable_weights=16,
            expected_num_seed_generators=2,
            supports_masking=True,
        )

    def test_keras_harness_with_cross_attention(self):
        self.run_keras_layer_test(
            TransformerDecoderBlock,
            {"num_heads": H, "intermediate_dim": F, "norm_first": True},
            input_shape={"inputs_shape": (B, T, D),
                         "encoder_outputs_shape": (B, S, D)},
            expected_output_shape=(B, T, D),
            expected_num_trainable_weights=26,
            expected_num_seed_generators=3,
            supports_masking=True,
            run_training_check=False,  # multi-input: see the fit test below
        )

    def test_causal(self):
        block = TransformerDecoderBlock(H, F)
        x, memory = random_inputs(B, T, D), random_inputs(B, S, D)
        base = np.asarray(block(x, memory))
        for t in range(T - 1):
            changed = x.copy()
            changed[:, t + 1 :] = 7.0
            out = np.asarray(block(changed, memory))
            np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5)

    def test_encoder_padding_is_invisible(self):
        block = TransformerDecoderBlock(H, F)
        x, memory = random_inputs(B, T, D), random_inputs(B, S, D)
        out = block(x, memory, encoder_padding_mask=SOURCE_PADDING)
        changed = memory.copy()
        changed[~SOURCE_PADDING] = -40.0
        out2 = block(x, changed, encoder_padding_mask=SOURCE_PADDING)
        np.testing.assert_allclose(out, out2, atol=1e-5)

    def test_cache_decoding_equals_full_pass(self):
        for norm_first in (False, True):
            block = TransformerDecoderBlock(H, F, norm_first=norm_first)
            x, memory = random_inputs(B, T, D), random_inputs(B, S, D)
            full, scores = block(x, memory, encoder_padding_mask=SOURCE_PADDING,
                                 return_attention_scores=True)
            for t, out, _ in decode_step_by_step(
                    block, x, memory, np.zeros((B, 2, T, H, D // H), "float32")):
                np.testing.assert_allclose(out[:, 0], np.asarray(full)[:, t], atol=1e-5)
            self.assertEqual(tuple(scores["cross_attention"].shape), (B, H, T, S))
            self.assertEqual(tuple(scores["self_attention"].shape), (B, H, T, T))

    def test_split_cache_decoding_equals_full_pass(self):
        block = TransformerDecoderBlock(H, F)
        x, memory = random_inputs(B, T, D), random_inputs(B, S, D)
        full = np.asarray(block(x, memory, encoder_padding_mask=SOURCE_PADDING))
        for t, out, cross_cache in decode_step_by_step(
                block, x, memory, (np.zeros((B, H, T, D // H), "float32"),) * 2):
            # The cross-attention cache made on the first step follows the
            # self-attention cache's layout.
            self.assertEqual([tuple(c.shape) for c in cross_cache], [(B, H, S, D // H)] * 2)
            np.testing.assert_allclose(out[:, 0], full[:, t], atol=1e-5)

    def test_stack_cache_decoding_equals_full_pass(self):
        decoder = TransformerDecoder(2, H, F, norm_first=True)
        x, memory = random_inputs(B, T, D), random_inputs(B, S, D)
        full = np.asarray(decoder(x, memory, encoder_padding_mask=SOURCE_PADDING))
        caches = [np.zeros((B, 2, T, H, D // H), "float32")] * 2
        cross = decoder.compute_cross_attention_caches(memory)
        for t in range(T):
            out, caches, cross = decoder(
                x[:, t : t + 1], encoder_padding_mask=SOURCE_PADDING,
                self_attention_caches=caches, cross_attention_caches=cross,
                cache_update_index=t,
            )
            np.testing.assert_allclose(out[:, 0], full[:, t], atol=1e-5)

    def test_half_precision_agrees(self):
        x, memory = random_inputs(B, T, D), random_inputs(B, S, D)
        self.assert_half_precision_agrees(
            lambda dtype: TransformerDecoderBlock(H, F, dtype=dtype),
            lambda layer: layer(x, memory, encoder_padding_mask=SOURCE_PADDING),
        )

    def test_bad_input(self):
        block = TransformerDecoderBlock(H, F)
        block(random_inputs(B, T, D))
        with pytest.raises(ValueError, match="without cross-attention"):
            block(random_inputs(B, T, D), random_inputs(B, S, D))
        block = TransformerDecoderBlock(H, F)
        block(random_inputs(B, T, D), random_inputs(B, S, D))
        with pytest.raises(ValueError, match="encoder_outputs"):
            block(random_inputs(B, T, D))
        with pytest.raises(ValueError, match="cache_update_index"):
            block(random_inputs(B, 1, D), random_inputs(B, S, D),
                  self_attention_cache=np.zeros((B, 2, T, H, 4), "float32"))
        with pytest.raises(ValueError, match="width"):
            TransformerDecoderBlock(H, F)(random_inputs(B, T, D), random_inputs(B, S, 8))


class ModelIntegrationTest(LayerTestCase):
    def _seq2seq(self, norm_first=False):
        source = keras.Input((None,), dtype="int32")
        target = keras.Input((None,), dtype="int32")
        embed = TokenAndPositionEmbedding(30, D)
        memory = TransformerEncoder(2, H, F, norm_first=norm_first)(embed(source))
        h = TransformerDecoder(2, H, F, norm_first=norm_first)(
            TokenAndPositionEmbedding(30, D)(target), memory
        )
        return keras.Model([source, target], keras.layers.Dense(30)(h))

    def test_functional_roundtrip_and_xla_fit(self):
        model = self._seq2seq()
        rng = np.random.default_rng(0)
        src = rng.integers(1, 30, (8, S))
        src[:, 5:] = 0
        tgt = rng.integers(1, 30, (8, T))
        losses = self.assert_fits_with_xla(
            model, [src, tgt], tgt,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            epochs=4,
        )
        self.assertLess(losses[-1], losses[0])
        self.assert_model_roundtrip(model, [src, tgt], atol=1e-5)

    def test_sequential_roundtrip(self):
        model = keras.Sequential([
            keras.Input((T,), dtype="int32"),
            TokenAndPositionEmbedding(30, D, max_length=T, positional="learned"),
            TransformerEncoderBlock(H, F, norm_first=True),
            TransformerDecoderBlock(H, F),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3),
        ])
        ids = np.array([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]])
        self.assert_model_roundtrip(model, ids)

    def test_mixed_precision_fit_is_finite(self):
        for policy in ("mixed_float16", "mixed_bfloat16"):
            keras.config.set_dtype_policy(policy)
            try:
                model = self._seq2seq(norm_first=True)
            finally:
                keras.config.set_dtype_policy("float32")
            src = np.random.default_rng(1).integers(1, 30, (4, S))
            tgt = np.random.default_rng(2).integers(1, 30, (4, T))
            self.assert_fits_with_xla(
                model, [src, tgt], tgt,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
