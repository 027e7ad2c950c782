"""Scaled dot-product and multi-head attention (Vaswani et al. 2017, 3.2)."""

import math

import keras
from keras import ops

from keras_xformer.layers._checks import check_positive_int
from keras_xformer.layers._checks import check_rate
from keras_xformer.layers._dropout import Dropout
from keras_xformer.layers._masking import keras_mask
from keras_xformer.layers._masking import merge_attention_masks

_register = keras.saving.register_keras_serializable(package="keras_xformer")

# Masked logits are replaced (not added to) with this value, in float32: a
# row whose keys are all masked becomes uniform instead of NaN, and no
# float16 overflow can happen because the softmax never runs in half
# precision.
_MASKED_LOGIT = -1e9


def scaled_dot_product_attention(
    query, key, value, mask=None, dropout=None, training=None
):
    """`Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V` (equation 1).

    Args:
        query: `(batch, query_length, heads, key_dim)`.
        key: `(batch, key_length, heads, key_dim)`.
        value: `(batch, key_length, heads, value_dim)`.
        mask: boolean, broadcastable to `(batch, query_length, key_length)`,
            `True` = attend; or `None`.
        dropout: an optional `keras.layers.Dropout` applied to the weights.
        training: passed to `dropout`.

    Returns:
        `(outputs, weights)`: outputs `(batch, query_length, heads,
        value_dim)` and attention weights `(batch, heads, query_length,
        key_length)` (before dropout).
    """
    dtype = query.dtype
    # Scaling the queries (T * d_k values) is cheaper than scaling the logits
    # (T * T values) and gives the same product.
    query = query * ops.cast(1.0 / math.sqrt(query.shape[-1]), dtype)
    # Explicit einsum letters: an ellipsis equation computes wrong float16
    # products with TensorFlow's oneDNN CPU kernels.
    single_query = query.shape[1] == 1
    if single_query:
        # One decoding step: a broadcast multiply and a sum read the
        # (batch, keys, heads, dim) cache once, in place; the einsum would
        # first transpose the whole cache to heads-major, every step.
        logits = ops.sum(query * key, axis=-1)  # (b, k, h)
        logits = ops.expand_dims(ops.transpose(logits, (0, 2, 1)), 2)
    else:
        logits = ops.einsum("bqhd,bkhd->bhqk", query, key)
    weights, dropped = _attention_weights(logits, mask, dtype, dropout, training)
    if single_query:
        # (b, h, 1, k) weights as (b, k, h, 1) against (b, k, h, d) values.
        per_key = ops.expand_dims(ops.transpose(dropped[:, :, 0], (0, 2, 1)), -1)
        outputs = ops.sum(per_key * value, axis=1, keepdims=True)  # (b, 1, h, d)
    else:
        outputs = ops.einsum("bhqk,bkhd->bqhd", dropped, value)
    return outputs, weights


def _attention_weights(logits, mask, dtype, dropout, training):
    """Softmax of `(batch, heads, Tq, Tk)` logits over the unmasked keys:
    `(weights, weights after dropout)` in `dtype`."""
    # The softmax always runs in float32: half-precision exponentials and
    # sums lose the agreement with float32 that mixed-precision users expect.
    logits = ops.cast(logits, "float32")
    if mask is not None:
        logits = ops.where(ops.expand_dims(mask, 1), logits, _MASKED_LOGIT)
    weights = ops.cast(ops.softmax(logits, axis=-1), dtype)
    dropped = weights if dropout is None else dropout(weights, training=training)
    return weights, dropped


def _project(inputs, kernel, bias):
    """`inputs (batch, length, d) @ kernel (d, heads, dim) + bias`."""
    d, heads, dim = kernel.shape
    flat = ops.reshape(inputs, (-1, d))
    outputs = ops.matmul(flat, ops.reshape(kernel, (d, heads * dim)))
    if bias is not None:
        outputs = outputs + ops.reshape(bias, (heads * dim,))
    shape = ops.shape(inputs)
    return ops.reshape(outputs, (shape[0], shape[1], heads, dim))


@_register
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention, a drop-in for `keras.layers.MultiHeadAttention`.

    `MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O` with
    `head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)` (section 3.2.2), the
    same weights, call arguments and masking semantics as Keras' layer, plus
    a key/value cache for incremental decoding.

    What differs from Keras' layer inside: self-attention (`query`, `key`
    and `value` the same tensor) runs one fused projection instead of
    three; masks are only materialized when some mask is given; the softmax
    runs in float32 under mixed precision; a query row whose keys are all
    masked is finite (uniform weights) in every dtype.

    Args:
        num_heads: number of attention heads `h`.
        key_dim: size of each head for query and key, `d_k`.
        value_dim: size of each head for value, `d_v` (default `key_dim`).
        dropout: dropout rate on the attention weights.
        use_bias: whether the projections have biases.
        output_shape: last dimension of the output (an int or a 1-tuple);
            default the query's last dimension.
        kernel_initializer: initializer of the projection kernels.
        bias_initializer: initializer of the biases.
        kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint: as in `keras.layers.Dense`.
        seed: seed of the dropout.
        **kwargs: other `keras.layers.Layer` arguments.

    Call arguments:
        query: `(batch, Tq, dim)`.
        value: `(batch, Tv, dim)`.
        key: `(batch, Tv, dim)`, default `value`.
        query_mask, value_mask, key_mask: `(batch, T)` padding masks (1 =
            token); read from Keras implicit masks when not given.
        attention_mask: `(batch, Tq, Tv)` boolean mask, 1 = attend.
        use_causal_mask: query `i` attends only to keys `<= i` (with a
            cache: `<= cache_update_index + i`, which also hides the cache
            slots not filled yet).
        return_attention_scores: also return the `(batch, heads, Tq, Tv)`
            attention weights.
        training: whether dropout is active.
        cache: `(batch, 2, max_length, heads, key_dim)` keys and values of
            earlier steps, or `None`.
        cache_update_index: where this call's keys/values are written into
            `cache`. `None` with a cache reuses the cache as it is (the
            cross-attention keys/values of an encoder output).

    Returns:
        `outputs (batch, Tq, output_dim)`; with a cache
        `(outputs, new_cache)`; with `return_attention_scores`, the scores
        come last. With a cache being updated, padding masks of `value`
        and `key` are ignored (they describe this call's tokens, not the
        cache); pass `attention_mask (batch, Tq, max_length)` instead.

    Example:

    >>> mha = MultiHeadAttention(num_heads=2, key_dim=4)
    >>> x = keras.ops.ones((1, 3, 8))
    >>> mha(x, x, use_causal_mask=True).shape
    (1, 3, 8)

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762), 3.2.
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        dropout=0.0,
        use_bias=True,
        output_shape=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        check_positive_int("num_heads", num_heads)
        check_positive_int("key_dim", key_dim)
        check_positive_int("value_dim", value_dim, allow_none=True)
        check_rate("dropout", dropout)
        if isinstance(output_shape, (list, tuple)):
            if len(output_shape) != 1:
                raise ValueError(
                    "`output_shape` must be an int or a 1-tuple. "
                    f"Received: output_shape={output_shape}"
                )
            output_shape = output_shape[0]
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim if value_dim else key_dim
        self.dropout = dropout
        self.use_bias = use_bias
        self._output_shape = output_shape
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.seed = seed
        self.dropout_layer = Dropout(
            dropout, seed=seed, dtype=self.dtype_policy
        )
        self.supports_masking = True

    @property
    def output_dim(self):
        return self._output_shape

    def _dense_weights(self, name, shape):
        # Each projection gets its own clone of the initializer so that a
        # seeded initializer does not give the four kernels equal values.
        kernel = self.add_weight(
            name=f"{name}_kernel",
            shape=shape,
            initializer=self.kernel_initializer.__class__.from_config(
                self.kernel_initializer.get_config()
            ),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        bias = None
        if self.use_bias:
            bias = self.add_weight(
                name=f"{name}_bias",
                shape=shape[1:],
                initializer=self.bias_initializer.__class__.from_config(
                    self.bias_initializer.get_config()
                ),
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        return kernel, bias

    def build(self, query_shape, value_shape=None, key_shape=None):
        value_shape = query_shape if value_shape is None else value_shape
        key_shape = value_shape if key_shape is None else key_shape
        for name, shape in (
            ("query", query_shape),
            ("value", value_shape),
            ("key", key_shape),
        ):
            if len(shape) != 3 or shape[-1] is None:
                raise ValueError(
                    f"`{name}` must have shape (batch, length, dim) with a "
                    f"known dim. Received: {name}.shape={tuple(shape)}"
                )
        if self._output_shape is None:
            self._output_shape = query_shape[-1]
        h, dk, dv = self.num_heads, self.key_dim, self.value_dim
        # Same weights, shapes and order as keras.layers.MultiHeadAttention,
        # so `set_weights(keras_mha.get_weights())` works.
        self.query_kernel, self.query_bias = self._dense_weights(
            "query", (query_shape[-1], h, dk)
        )
        self.key_kernel, self.key_bias = self._dense_weights(
            "key", (key_shape[-1], h, dk)
        )
        self.value_kernel, self.value_bias = self._dense_weights(
            "value", (value_shape[-1], h, dv)
        )
        self.output_kernel = self.add_weight(
            name="output_kernel",
            shape=(h, dv, self._output_shape),
            initializer=self.kernel_initializer.__class__.from_config(
                self.kernel_initializer.get_config()
            ),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.output_bias = None
        if self.use_bias:
            self.output_bias = self.add_weight(
                name="output_bias",
                shape=(self._output_shape,),
                initializer=self.bias_initializer.__class__.from_config(
                    self.bias_initializer.get_config()
                ),
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        self._fusable = query_shape[-1] == key_shape[-1] == value_shape[-1]
        self.built = True

    # Projections ---------------------------------------------------------

    def project_query(self, query):
        """`(batch, T, dim)` to per-head queries `(batch, T, heads, key_dim)`."""
        return _project(query, self.query_kernel, self.query_bias)

    def project_key_value(self, key, value=None):
        """Per-head keys and values `(batch, T, heads, dim)` of the inputs."""
        value = key if value is None else value
        if key is value and self._fusable:
            # One matmul instead of two: the same input read once.
            k, v = self._fused_projection(
                key,
                (self.key_kernel, self.value_kernel),
                (self.key_bias, self.value_bias),
            )
            return k, v
        return (
            _project(key, self.key_kernel, self.key_bias),
            _project(value, self.value_kernel, self.value_bias),
        )

    def _fused_projection(self, inputs, kernels, biases):
        d = kernels[0].shape[0]
        flat_kernels = [ops.reshape(k, (d, -1)) for k in kernels]
        sizes = [k.shape[-1] for k in flat_kernels]
        flat = ops.reshape(inputs, (-1, d))
        outputs = ops.matmul(flat, ops.concatenate(flat_kernels, axis=-1))
        if self.use_bias:
            outputs = outputs + ops.concatenate(
                [ops.reshape(b, (-1,)) for b in biases], axis=-1
            )
        shape = ops.shape(inputs)
        # One split, whose gradient is one concatenation (slices would each
        # back-propagate as a zero-padded copy of the whole output).
        split_points = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
        return [
            ops.reshape(part, (shape[0], shape[1], self.num_heads, kernel.shape[-1]))
            for part, kernel in zip(ops.split(outputs, split_points, axis=-1), kernels)
        ]

    def compute_cache(self, value, key=None):
        """The `(batch, 2, T, heads, key_dim)` key/value cache of `value`.

        Used to compute the cross-attention keys and values of an encoder
        output once before decoding; pass the result as `cache` with
        `cache_update_index=None` on every step.
        """
        self._check_cache_dims()
        k, v = self.project_key_value(value if key is None else key, value)
        return ops.stack([k, v], axis=1)

    def _check_cache_dims(self):
        if self.value_dim != self.key_dim:
            raise ValueError(
                "A key/value cache needs `value_dim == key_dim`. Received: "
                f"key_dim={self.key_dim}, value_dim={self.value_dim}"
            )

    # Call ----------------------------------------------------------------

    def call(
        self,
        query,
        value=None,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
        cache=None,
        cache_update_index=None,
    ):
        reuse_cache = cache is not None and cache_update_index is None
        if value is None and not reuse_cache:
            raise ValueError(
                "`value` is required, except with a `cache` and no "
                "`cache_update_index` (keys and values read from the cache)."
            )
        if key is None:
            key = value
        if query_mask is None:
            query_mask = keras_mask(query)
        if value_mask is None:
            value_mask = keras_mask(value)
        if key is value:
            key_mask = None
        elif key_mask is None:
            key_mask = keras_mask(key)

        if reuse_cache:
            q = self.project_query(query)
        elif query is value and key is value and self._fusable:
            # Self-attention: one matmul against the concatenated kernels
            # reads the input once instead of three times.
            q, k, v = self._fused_projection(
                query,
                (self.query_kernel, self.key_kernel, self.value_kernel),
                (self.query_bias, self.key_bias, self.value_bias),
            )
        else:
            q = self.project_query(query)
            k, v = self.project_key_value(key, value)

        causal_offset = 0
        if cache is not None:
            self._check_cache_dims()
            if len(cache.shape) != 5 or cache.shape[1] != 2:
                raise ValueError(
                    "`cache` must have shape (batch, 2, max_length, "
                    f"num_heads, key_dim). Received: cache.shape={cache.shape}"
                )
            if cache_update_index is None:
                k, v = cache[:, 0], cache[:, 1]
            else:
                # One in-place dynamic-update-slice of the whole cache
                # (XLA reuses the loop buffer) rather than two updates and
                # a re-stack, which copy the cache every step.
                new_key_value = ops.cast(ops.stack([k, v], axis=1), cache.dtype)
                cache = ops.slice_update(
                    cache, (0, 0, cache_update_index, 0, 0), new_key_value
                )
                k, v = cache[:, 0], cache[:, 1]
                causal_offset = cache_update_index
                # This call's padding masks describe its own tokens, not the
                # cache slots.
                value_mask = key_mask = None

        mask = merge_attention_masks(
            ops.shape(q)[1],
            ops.shape(k)[1],
            query_mask=query_mask,
            value_mask=value_mask,
            key_mask=key_mask,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
            causal_offset=causal_offset,
        )
        attended, scores = scaled_dot_product_attention(
            q, ops.cast(k, q.dtype), ops.cast(v, q.dtype), mask,
            dropout=self.dropout_layer if self.dropout else None,
            training=training,
        )
        outputs = self._combine_heads(attended)

        results = (outputs,)
        if cache is not None:
            results += (cache,)
        if return_attention_scores:
            results += (scores,)
        return results[0] if len(results) == 1 else results

    def _combine_heads(self, attended):
        """`Concat(head_1, ..., head_h) W^O`: `(B, T, h, dv)` to `(B, T, out)`."""
        h, dv, out = self.output_kernel.shape
        shape = ops.shape(attended)
        flat = ops.reshape(attended, (-1, h * dv))
        outputs = ops.matmul(flat, ops.reshape(self.output_kernel, (h * dv, out)))
        if self.output_bias is not None:
            outputs = outputs + self.output_bias
        return ops.reshape(outputs, (shape[0], shape[1], out))

    # Shapes and config ---------------------------------------------------

    def compute_output_shape(self, query_shape, value_shape=None, key_shape=None):
        out = self._output_shape or query_shape[-1]
        return tuple(query_shape[:-1]) + (out,)

    def compute_output_spec(
        self,
        query,
        value=None,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
        cache=None,
        cache_update_index=None,
    ):
        outputs = keras.KerasTensor(
            self.compute_output_shape(query.shape), dtype=self.compute_dtype
        )
        results = (outputs,)
        key_length = None if value is None else value.shape[1]
        if cache is not None:
            results += (keras.KerasTensor(cache.shape, dtype=cache.dtype),)
            key_length = cache.shape[2]
        if return_attention_scores:
            results += (
                keras.KerasTensor(
                    (query.shape[0], self.num_heads, query.shape[1], key_length),
                    dtype=self.compute_dtype,
                ),
            )
        return results[0] if len(results) == 1 else results

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "output_shape": self._output_shape,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
                "bias_regularizer": keras.regularizers.serialize(
                    self.bias_regularizer
                ),
                "kernel_constraint": keras.constraints.serialize(
                    self.kernel_constraint
                ),
                "bias_constraint": keras.constraints.serialize(
                    self.bias_constraint
                ),
                "seed": self.seed,
            }
        )
        return config
