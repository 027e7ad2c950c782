"""The Transformer decoder (Vaswani et al. 2017, 3.1), with key/value caches
for incremental decoding."""

import keras

from keras_xformer.layers._block import BlockBase
from keras_xformer.layers._block import StackBase
from keras_xformer.layers._block import check_width
from keras_xformer.layers._block import padding_mask_or_keras_mask
from keras_xformer.layers.attention import is_split_cache

_register = keras.saving.register_keras_serializable(package="keras_xformer")


@_register
class TransformerDecoderBlock(BlockBase):
    """One decoder layer: masked (causal) self-attention, cross-attention
    over the encoder output, then a position-wise feed-forward network, each
    with a residual connection and LayerNorm.

    Built (or first called) without `encoder_outputs`, the block has no
    cross-attention: a decoder-only (GPT-style) block.

    Args:
        num_heads, intermediate_dim, dropout, activation, norm_first,
        layer_norm_epsilon, kernel_initializer, bias_initializer: as in
            `TransformerEncoderBlock` (same names, same order).
        **kwargs: other `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(batch, Tq, width)` target-side inputs.
        encoder_outputs: `(batch, Ts, width)`, or `None` for a decoder-only
            block (and on cached steps, where the cross-attention cache
            holds what is needed).
        decoder_padding_mask: `(batch, Tq)`; the Keras mask of `inputs` when
            not given.
        encoder_padding_mask: `(batch, Ts)`; the Keras mask of
            `encoder_outputs` when not given.
        use_causal_mask: mask future positions in self-attention.
        self_attention_cache: `(batch, 2, max_length, heads, key_dim)`, or
            a split `(keys, values)` pair of `(batch, heads, max_length,
            key_dim)` (see `MultiHeadAttention`'s `cache`), or `None`. With
            it the call is one incremental decoding step.
        cross_attention_cache: `(batch, 2, Ts, heads, key_dim)` keys and
            values of the encoder output (or a split pair). `None` on the
            first cached step: they are computed from `encoder_outputs`
            (in the self-attention cache's layout) and returned, to be
            passed back on later steps.
        cache_update_index: position of `inputs[:, 0]` in the sequence (the
            slot of the self-attention cache to write).
        self_attention_cache_rows: `(batch, max_length)` int, or `None`:
            the cache row holding each row's keys/values at each position
            (see `MultiHeadAttention`'s `cache_rows`; beam search).
        return_attention_scores: also return a dict with the
            `"self_attention"` and `"cross_attention"` weights
            `(batch, heads, Tq, Tk)`.
        training: whether dropout is active.

    Returns:
        `outputs (batch, Tq, width)`; with a self-attention cache
        `(outputs, self_attention_cache, cross_attention_cache)`; with
        `return_attention_scores` the dict comes last.

    Example:

    >>> decoder = TransformerDecoderBlock(4, 64)
    >>> target, source = keras.ops.ones((2, 3, 32)), keras.ops.ones((2, 5, 32))
    >>> decoder(target, source).shape
    (2, 3, 32)

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762), 3.1.
    """

    def build(self, inputs_shape, encoder_outputs_shape=None):
        key_dim = check_width(inputs_shape[-1], self.num_heads)
        self.self_attention = self._attention("self_attention", key_dim)
        self.self_attention.build(inputs_shape, inputs_shape)
        self.self_attention_norm = self._norm("self_attention_norm")
        self.self_attention_norm.build(inputs_shape)
        self.self_attention_dropout = self._dropout()
        self.cross_attention = None
        if encoder_outputs_shape is not None:
            if encoder_outputs_shape[-1] != inputs_shape[-1]:
                raise ValueError(
                    "`encoder_outputs` must have the width of `inputs`. "
                    f"Received: inputs.shape={tuple(inputs_shape)}, "
                    f"encoder_outputs.shape={tuple(encoder_outputs_shape)}"
                )
            self.cross_attention = self._attention("cross_attention", key_dim)
            self.cross_attention.build(inputs_shape, encoder_outputs_shape)
            self.cross_attention_norm = self._norm("cross_attention_norm")
            self.cross_attention_norm.build(inputs_shape)
            self.cross_attention_dropout = self._dropout()
        self.feed_forward = self._feed_forward()
        self.feed_forward.build(inputs_shape)
        self.feed_forward_norm = self._norm("feed_forward_norm")
        self.feed_forward_norm.build(inputs_shape)
        self.feed_forward_dropout = self._dropout()

    def compute_cross_attention_cache(self, encoder_outputs, layout="stacked"):
        """Cross-attention keys and values: `(batch, 2, Ts, heads,
        key_dim)`, or with `layout="split"` a `(keys, values)` pair of
        `(batch, heads, Ts, key_dim)` (see `MultiHeadAttention`'s
        `compute_cache`)."""
        if self.cross_attention is None:
            raise ValueError("This decoder block has no cross-attention.")
        return self.cross_attention.compute_cache(encoder_outputs, layout=layout)

    def call(
        self,
        inputs,
        encoder_outputs=None,
        decoder_padding_mask=None,
        encoder_padding_mask=None,
        use_causal_mask=True,
        self_attention_cache=None,
        cross_attention_cache=None,
        cache_update_index=None,
        return_attention_scores=False,
        training=None,
        self_attention_cache_rows=None,
    ):
        has_source = encoder_outputs is not None or cross_attention_cache is not None
        if has_source and self.cross_attention is None:
            raise ValueError(
                "This TransformerDecoderBlock was built without "
                "cross-attention (first called without `encoder_outputs`), "
                "so it cannot attend to `encoder_outputs`."
            )
        if self.cross_attention is not None and not has_source:
            raise ValueError(
                "This TransformerDecoderBlock has cross-attention: pass "
                "`encoder_outputs` (or a `cross_attention_cache`)."
            )
        if self_attention_cache is not None and cache_update_index is None:
            raise ValueError(
                "`self_attention_cache` needs `cache_update_index`, the "
                "position of the first input token."
            )
        decoder_padding_mask = padding_mask_or_keras_mask(
            decoder_padding_mask, inputs
        )
        encoder_padding_mask = padding_mask_or_keras_mask(
            encoder_padding_mask, encoder_outputs
        )
        caching = self_attention_cache is not None
        scores = {}

        def self_attend(x):
            results = self.self_attention(
                x,
                x,
                query_mask=decoder_padding_mask,
                value_mask=decoder_padding_mask,
                use_causal_mask=use_causal_mask,
                cache=self_attention_cache,
                cache_update_index=cache_update_index,
                cache_rows=self_attention_cache_rows,
                # Scores only when asked: without them the attention may
                # run a fused (flash) kernel.
                return_attention_scores=return_attention_scores,
                training=training,
            )
            if not isinstance(results, tuple):
                results = (results,)
            if return_attention_scores:
                scores["self_attention"] = results[-1]
            return results[0], (results[1] if caching else None)

        x, new_self_cache = self._residual(
            inputs,
            self.self_attention_norm,
            self.self_attention_dropout,
            self_attend,
            training,
        )

        new_cross_cache = cross_attention_cache
        if self.cross_attention is not None:
            if caching and new_cross_cache is None:
                new_cross_cache = self.compute_cross_attention_cache(
                    encoder_outputs,
                    layout=(
                        "split" if is_split_cache(self_attention_cache) else "stacked"
                    ),
                )

            def cross_attend(y):
                results = self.cross_attention(
                    y,
                    encoder_outputs,
                    query_mask=decoder_padding_mask,
                    value_mask=encoder_padding_mask,
                    cache=new_cross_cache,
                    return_attention_scores=return_attention_scores,
                    training=training,
                )
                if not isinstance(results, tuple):
                    results = (results,)
                if return_attention_scores:
                    scores["cross_attention"] = results[-1]
                return results[0], None

            x, _ = self._residual(
                x,
                self.cross_attention_norm,
                self.cross_attention_dropout,
                cross_attend,
                training,
            )

        x, _ = self._residual(
            x,
            self.feed_forward_norm,
            self.feed_forward_dropout,
            lambda y: (self.feed_forward(y, training=training), None),
            training,
        )
        results = (x,)
        if caching:
            results += (new_self_cache, new_cross_cache)
        if return_attention_scores:
            results += (scores,)
        return results[0] if len(results) == 1 else results


@_register
class TransformerDecoder(StackBase):
    """`num_layers` stacked `TransformerDecoderBlock`s (a final LayerNorm
    when `norm_first`).

    Args:
        num_layers: number of blocks `N`.
        num_heads, intermediate_dim, dropout, activation, norm_first,
        layer_norm_epsilon, kernel_initializer, bias_initializer: as in
            `TransformerDecoderBlock`.

    Call arguments:
        inputs: `(batch, Tq, width)`.
        encoder_outputs: `(batch, Ts, width)`, or `None` (decoder-only).
        decoder_padding_mask, encoder_padding_mask: `(batch, T)` padding
            masks; the inputs' Keras masks when not given.
        training: whether dropout is active.
        self_attention_caches: a list of `num_layers` self-attention caches
            for incremental decoding (see `TransformerDecoderBlock`).
        cross_attention_caches: a list of `num_layers` cross-attention
            caches, or `None` to compute them from `encoder_outputs`.
        cache_update_index: position of `inputs[:, 0]`.
        self_attention_cache_rows: `(batch, max_length)` int, or `None`:
            which cache row holds each row's keys/values at each position,
            the same for every block (beam search; see
            `MultiHeadAttention`'s `cache_rows`).

    Returns:
        `(batch, Tq, width)`; with caches
        `(outputs, self_attention_caches, cross_attention_caches)`.

    Example:

    >>> decoder = TransformerDecoder(2, num_heads=4, intermediate_dim=64)
    >>> decoder(keras.ops.ones((2, 3, 32)), keras.ops.ones((2, 5, 32))).shape
    (2, 3, 32)
    """

    block_class = TransformerDecoderBlock

    def build(self, inputs_shape, encoder_outputs_shape=None):
        for block in self.blocks:
            block.build(inputs_shape, encoder_outputs_shape)
        if self.final_norm is not None:
            self.final_norm.build(inputs_shape)

    def compute_cross_attention_caches(self, encoder_outputs, layout="stacked"):
        """The cross-attention cache of every block, computed once, in
        `layout` `"stacked"` or `"split"` (see `MultiHeadAttention`'s
        `compute_cache`)."""
        return [
            block.compute_cross_attention_cache(encoder_outputs, layout=layout)
            for block in self.blocks
        ]

    def call(
        self,
        inputs,
        encoder_outputs=None,
        decoder_padding_mask=None,
        encoder_padding_mask=None,
        training=None,
        self_attention_caches=None,
        cross_attention_caches=None,
        cache_update_index=None,
        self_attention_cache_rows=None,
    ):
        decoder_padding_mask = padding_mask_or_keras_mask(
            decoder_padding_mask, inputs
        )
        encoder_padding_mask = padding_mask_or_keras_mask(
            encoder_padding_mask, encoder_outputs
        )
        caching = self_attention_caches is not None
        if caching and len(self_attention_caches) != self.num_layers:
            raise ValueError(
                f"Expected {self.num_layers} self-attention caches, got "
                f"{len(self_attention_caches)}."
            )
        new_self, new_cross = [], []
        x = inputs
        for i, block in enumerate(self.blocks):
            if not caching:
                x = block(
                    x,
                    encoder_outputs,
                    decoder_padding_mask=decoder_padding_mask,
                    encoder_padding_mask=encoder_padding_mask,
                    training=training,
                )
                continue
            x, self_cache, cross_cache = block(
                x,
                encoder_outputs,
                decoder_padding_mask=decoder_padding_mask,
                encoder_padding_mask=encoder_padding_mask,
                self_attention_cache=self_attention_caches[i],
                cross_attention_cache=(
                    None
                    if cross_attention_caches is None
                    else cross_attention_caches[i]
                ),
                cache_update_index=cache_update_index,
                self_attention_cache_rows=self_attention_cache_rows,
                training=training,
            )
            new_self.append(self_cache)
            new_cross.append(cross_cache)
        x = self._finish(x)
        if caching:
            return x, new_self, new_cross
        return x

    def compute_mask(self, inputs, previous_mask=None):
        return previous_mask
