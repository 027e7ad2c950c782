"""Scaled dot-product and multi-head attention (Vaswani et al. 2017, 3.2)."""

import math

import keras
from keras import ops
from keras.src.backend import compute_output_spec as _trace_output_spec
from keras.src.backend import set_keras_mask
from keras.src.layers.attention.multi_head_attention import (
    _build_attention_equation,
)

from keras_xformer.layers._checks import check_rate
from keras_xformer.layers._dropout import Dropout
from keras_xformer.layers._lora import LoraMixin
from keras_xformer.layers._masking import causal_mask
from keras_xformer.layers._masking import keras_mask
from keras_xformer.layers._masking import merge_attention_masks
from keras_xformer.layers._quantization import dtype_policy_config

_register = keras.saving.register_keras_serializable(package="keras_xformer")

CACHE_LAYOUTS = ("stacked", "split")


def check_cache_layout(layout):
    if layout not in CACHE_LAYOUTS:
        raise ValueError(
            f'`layout` must be "stacked" or "split". Received: layout={layout!r}'
        )

# Masked logits are replaced (not added to) with this value, in float32 (a
# minimum with it, in `_attention_weights`): a
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
        mask: boolean, broadcastable to `(batch, query_length, key_length)`
            or to `(batch, heads, query_length, key_length)`, `True` =
            attend; or `None`.
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


def _heads_first_attention(query, key, value, mask=None, dropout=None, training=None):
    """`scaled_dot_product_attention` for keys and values laid out heads
    first, `(batch, heads, key_length, dim)` (a split cache): the scores and
    the weighted sum are two batched matmuls (batch and heads as batch
    dimensions) that read the cache in place. Same arguments and results
    otherwise (`query` `(batch, query_length, heads, key_dim)`)."""
    dtype = query.dtype
    query = query * ops.cast(1.0 / math.sqrt(query.shape[-1]), dtype)
    # On XLA:CPU these are `dot`s. The (batch, keys, heads, dim) layout
    # gives a broadcast multiply and a sum instead (the einsum would
    # transpose the cache), whose weighted sum over more than 32 keys is
    # materialized at (batch, keys, heads, dim) before being summed
    # (benchmarks/beam_profile.py).
    logits = ops.einsum("bqhd,bhkd->bhqk", query, key)
    weights, dropped = _attention_weights(logits, mask, dtype, dropout, training)
    outputs = ops.einsum("bhqk,bhkd->bqhd", dropped, value)
    return outputs, weights


def _fold_rows(x, group):
    """`(batch * group, T, ...)` -> `(batch, group * T, ...)`: consecutive
    rows become positions of one row."""
    return ops.reshape(x, (-1, group * x.shape[1]) + tuple(x.shape[2:]))


def _unfold_rows(x, group):
    """The inverse of `_fold_rows`."""
    return ops.reshape(x, (-1, x.shape[1] // group) + tuple(x.shape[2:]))


def _unfold_scores(scores, group):
    """`(batch, heads, group * Tq, Tk)` -> `(batch * group, heads, Tq, Tk)`."""
    _, heads, length, keys = scores.shape
    scores = ops.reshape(scores, (-1, heads, group, length // group, keys))
    scores = ops.transpose(scores, (0, 2, 1, 3, 4))
    return ops.reshape(scores, (-1, heads, length // group, keys))


def _attention_weights(logits, mask, dtype, dropout, training):
    """Softmax of `(batch, heads, Tq, Tk)` logits over the unmasked keys:
    `(weights, weights after dropout)` in `dtype`."""
    # The softmax always runs in float32: half-precision exponentials and
    # sums lose the agreement with float32 that mixed-precision users expect.
    logits = ops.cast(logits, "float32")
    if mask is not None:
        if len(mask.shape) == 3:
            mask = ops.expand_dims(mask, 1)
        # `where(mask, logits, _MASKED_LOGIT)` as a minimum with a bound
        # made from the mask alone (+inf where attended): the same values
        # for every logit above _MASKED_LOGIT, and in a TFLite file one
        # XNNPACK op between the scores' and the softmax's, where a
        # SELECT_V2 (a builtin, single-threaded) split XNNPACK's graph at
        # every attention (benchmarks/generate.py's before rows measure
        # this with `_top_k`: int8 beam b8 3.93 -> 3.57 ms a step at two
        # threads; benchmarks/RESULTS.md, session 16).
        # float32 constants: Python floats would take `floatx`, and -1e9
        # in float16 is -inf (a fully masked row would be NaN).
        bound = ops.where(
            mask,
            ops.convert_to_tensor(float("inf"), "float32"),
            ops.convert_to_tensor(_MASKED_LOGIT, "float32"),
        )
        logits = ops.minimum(logits, bound)
    weights = ops.cast(ops.softmax(logits, axis=-1), dtype)
    dropped = weights if dropout is None else dropout(weights, training=training)
    return weights, dropped


def _fused_kernel_attention(query, key, value, mask, flash_attention):
    """`keras.ops.dot_product_attention` (cuDNN / flash kernels where the
    backend has them) with the einsum path's guarantee: a query row whose
    keys are all masked gets uniform weights (the mean of the values)
    instead of NaN, whatever kernel runs."""
    visible = None
    if mask is not None:
        if len(mask.shape) == 3:
            mask = ops.expand_dims(mask, 1)
        visible = ops.any(mask, axis=-1)  # (batch, heads or 1, Tq)
        # Such rows attend to every key inside the kernel (no NaN there)
        # and are replaced below.
        mask = ops.logical_or(mask, ops.logical_not(ops.expand_dims(visible, -1)))
    outputs = ops.dot_product_attention(
        query,
        key,
        value,
        mask=mask,
        scale=1.0 / math.sqrt(query.shape[-1]),
        flash_attention=flash_attention,
    )
    if visible is None:
        return outputs
    uniform = ops.mean(value, axis=1, keepdims=True)  # (batch, 1, heads, dim)
    visible = ops.expand_dims(ops.transpose(visible, (0, 2, 1)), -1)
    return ops.where(visible, outputs, ops.cast(uniform, outputs.dtype))


def _read_cache_rows(cache, rows):
    """Keys and values `(batch, T, heads, dim)` of a `(batch, 2, T, heads,
    dim)` cache, position `t` of row `b` read from cache row `rows[b, t]`:
    one gather of whole (heads, dim) slices."""
    shape = ops.shape(cache)
    length = shape[2]
    flat = ops.reshape(cache, (-1,) + tuple(cache.shape[3:]))
    # Flat index of (rows[b, t], 0, t) in the (batch * 2 * T) slices.
    index = ops.cast(rows, "int32") * (2 * length) + ops.expand_dims(
        ops.arange(length, dtype="int32"), 0
    )
    return ops.take(flat, index, axis=0), ops.take(flat, index + length, axis=0)


def _read_split_cache_rows(keys, values, rows):
    """`_read_cache_rows` for a split cache: keys and values `(batch, heads,
    T, dim)` with position `t` of row `b` read from cache row `rows[b, t]`,
    one gather of `dim`-sized slices each."""
    shape = ops.shape(keys)
    heads, length = shape[1], shape[2]
    # Flat index of (rows[b, t], h, t) in the (batch * heads * T) slices.
    index = (
        ops.expand_dims(ops.cast(rows, "int32") * (heads * length), 1)
        + ops.reshape(ops.arange(heads, dtype="int32") * length, (1, -1, 1))
        + ops.reshape(ops.arange(length, dtype="int32"), (1, 1, -1))
    )
    dim = keys.shape[-1]
    return (
        ops.take(ops.reshape(keys, (-1, dim)), index, axis=0),
        ops.take(ops.reshape(values, (-1, dim)), index, axis=0),
    )


def is_split_cache(cache):
    """Whether `cache` is a `(keys, values)` pair (the split layout) rather
    than one stacked `(batch, 2, T, heads, dim)` tensor."""
    return isinstance(cache, (tuple, list))


def _fused_kernel_by_default():
    """Whether `ops.dot_product_attention` runs when the user did not ask
    for flash attention either way: on GPU/TPU, where the backends reach
    cuDNN/flash kernels. On CPU our einsum path measured faster
    (benchmarks/attention.py, `core` rows)."""
    global _FUSED_BY_DEFAULT
    if _FUSED_BY_DEFAULT is None:
        try:
            devices = keras.distribution.list_devices()
        except Exception:  # a backend without device listing: stay on CPU
            devices = []
        _FUSED_BY_DEFAULT = any(
            not str(d).lower().startswith("cpu") and "cpu" not in str(d).lower()
            for d in devices
        )
    return _FUSED_BY_DEFAULT


_FUSED_BY_DEFAULT = None


def _concatenate_projections(layer, inputs, denses):
    """`inputs @ [W_1 | W_2 | ...] + [b_1 | b_2 | ...]` split back into
    per-head `(batch, T, heads, dim)` tensors: one matmul reads `inputs`
    once instead of once per projection (kernels concatenated at call
    time, so the weights stay Keras' own `EinsumDense` sublayers)."""
    dtype = layer.compute_dtype
    kernels = [ops.cast(dense.kernel, dtype) for dense in denses]
    d = kernels[0].shape[0]
    flat_kernels = [ops.reshape(k, (d, -1)) for k in kernels]
    sizes = [k.shape[-1] for k in flat_kernels]
    flat = ops.reshape(ops.cast(inputs, dtype), (-1, d))
    outputs = ops.matmul(flat, ops.concatenate(flat_kernels, axis=-1))
    if denses[0].bias is not None:
        outputs = outputs + ops.cast(
            ops.concatenate(
                [ops.reshape(dense.bias, (-1,)) for dense in denses], axis=-1
            ),
            dtype,
        )
    shape = ops.shape(inputs)
    # One split, whose gradient is one concatenation (slices would each
    # back-propagate as a zero-padded copy of the whole output).
    split_points = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
    parts = ops.split(outputs, split_points, axis=-1) if split_points else [outputs]
    return [
        ops.reshape(part, (shape[0], shape[1]) + tuple(kernel.shape[1:]))
        for part, kernel in zip(parts, kernels)
    ]


@_register
class MultiHeadAttention(LoraMixin, keras.layers.MultiHeadAttention):
    """Multi-head attention: `keras.layers.MultiHeadAttention` plus a
    key/value cache, fused projections and a float32 softmax.

    `MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O` with
    `head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)` (section 3.2.2). This is
    a subclass of Keras' layer: the same arguments, weights (its
    `EinsumDense` sublayers `query`, `key`, `value`, `attention_output` and
    `gate`), call arguments, masking and errors, so Keras' model-level
    features work on it: `quantize(...)`, `enable_lora(rank)` on the
    sublayers, dtype policy maps, `attention_axes`, `use_gate`,
    `sliding_window`, `flash_attention`.

    What differs inside, for inputs `(batch, length, dim)` with the default
    `attention_axes`: self-attention (`query`, `key` and `value` the same
    tensor) runs one matmul against the concatenated Q/K/V kernels, and
    cross-attention one against the K/V kernels (each projection runs on
    its own when its sublayer is quantized); the softmax runs in float32
    under mixed precision; a query row whose keys are all masked is finite
    (uniform weights) in every dtype; a key/value cache serves incremental
    decoding. Attention runs through `keras.ops.dot_product_attention`
    (flash/cuDNN kernels) when flash attention is enabled or an
    accelerator is present and no scores or dropout are needed; on CPU the
    einsum path, which measured faster there.

    Args:
        num_heads: number of attention heads `h`.
        key_dim: size of each head for query and key, `d_k`.
        value_dim: size of each head for value, `d_v` (default `key_dim`).
        dropout: dropout rate on the attention weights.
        use_bias: whether the projections have biases.
        output_shape: the output's last dimension(s), an int or a tuple;
            default the query's last dimension.
        attention_axes: axes attention runs over (Keras' meaning); `None`
            means all axes but batch, heads and features.
        sliding_window: query `i` sees keys `j` with `|i - j| <
            sliding_window` only (with a cache, in absolute positions).
        flash_attention: `True`/`False` forces `ops.dot_product_attention`
            with (or without) flash kernels; `None` follows
            `keras.config.is_flash_attention_enabled()` and the device.
        kernel_initializer: initializer of the projection kernels.
        bias_initializer: initializer of the biases.
        kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint: as in `keras.layers.Dense`.
        use_gate: a sigmoid gate computed from the query multiplies the
            attention output (Keras' gated attention).
        seed: seed of the dropout.
        **kwargs: other `keras.layers.Layer` arguments.

    Call arguments:
        query: `(batch, Tq, dim)`.
        value: `(batch, Tv, dim)`.
        key: `(batch, Tv, dim)`, default `value`.
        query_mask, value_mask, key_mask: `(batch, T)` padding masks (1 =
            token); read from Keras implicit masks when not given.
        attention_mask: `(batch, Tq, Tv)` boolean mask, 1 = attend (also
            `(Tq, Tv)` or `(batch, heads, Tq, Tv)`).
        return_attention_scores: also return the `(batch, heads, Tq, Tv)`
            attention weights.
        training: whether dropout is active.
        use_causal_mask: query `i` attends only to keys `<= i` (with a
            cache: `<= cache_update_index + i`, which also hides the cache
            slots not filled yet).
        cache: `(batch, 2, max_length, heads, key_dim)` keys and values of
            earlier steps (keras-hub's layout), or a `(keys, values)` pair
            of `(batch, heads, max_length, key_dim)` tensors (the split
            layout, heads first: what `generate` uses, since a one-token
            step then reads the cache with two batched matmuls in place),
            or `None`. The cache comes back in the layout it came in
            (`compute_cache(..., layout=...)` makes either).
        cache_update_index: where this call's keys/values are written into
            `cache`. `None` with a cache reuses the cache as it is (the
            cross-attention keys/values of an encoder output). A reused
            cache of batch `B` also serves a query of batch `B * g` (static
            sizes): query rows `b * g ... b * g + g - 1` attend to cache row
            `b`, which is read once for all of them (beam search's beams
            of one source); `value_mask` then has the cache's batch.
        cache_rows: `(batch, max_length)` int, with `cache_update_index`:
            the cache row that holds the keys/values of this row's position
            `t`, for a cache whose rows are never reordered (beam search
            follows its beams' parents through it instead of copying the
            whole cache every step). `None`: row `b` holds row `b`'s.

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
        attention_axes=None,
        sliding_window=None,
        flash_attention=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        use_gate=False,
        seed=None,
        **kwargs,
    ):
        check_rate("dropout", dropout)
        super().__init__(
            num_heads=num_heads,
            key_dim=key_dim,
            value_dim=value_dim,
            dropout=dropout,
            use_bias=use_bias,
            output_shape=output_shape,
            attention_axes=attention_axes,
            sliding_window=sliding_window,
            flash_attention=flash_attention,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            use_gate=use_gate,
            seed=seed,
            **kwargs,
        )
        # Whether the projections may run as one matmul (benchmarks turn it
        # off to measure what it buys).
        self._fusable = True
        self._sequence_inputs = True

    def build(self, query_shape, value_shape=None, key_shape=None):
        value_shape = query_shape if value_shape is None else value_shape
        key_shape = value_shape if key_shape is None else key_shape
        if tuple(value_shape[1:-1]) != tuple(key_shape[1:-1]):
            raise ValueError(
                "All dimensions of `value` and `key`, except the last one, "
                f"must be equal. Received: value_shape={value_shape} and "
                f"key_shape={key_shape}"
            )
        for name, shape in (
            ("query", query_shape),
            ("value", value_shape),
            ("key", key_shape),
        ):
            if len(shape) < 3 or shape[-1] is None:
                raise ValueError(
                    f"`{name}` must have shape (batch, length, dim) (or "
                    "(batch, ..., dim) with `attention_axes`) with a known "
                    f"dim. Received: {name}.shape={tuple(shape)}"
                )
        super().build(query_shape, value_shape, key_shape)
        # Our fast path (fused projections, cache) is for the Transformer's
        # (batch, length, dim) inputs; other ranks run Keras' equations.
        self._sequence_inputs = (
            len(query_shape) == len(value_shape) == len(key_shape) == 3
            and tuple(self._attention_axes) == (1,)
        )

    def _build_attention(self, rank):
        # Keras' version, with our dropout (cheap random bits under XLA).
        if self._attention_axes is None:
            self._attention_axes = tuple(range(1, rank - 2))
        else:
            self._attention_axes = tuple(
                axis if axis >= 0 else (rank - 1) + axis
                for axis in self._attention_axes
            )
        (
            self._dot_product_equation,
            self._combine_equation,
            attn_scores_rank,
        ) = _build_attention_equation(rank, attn_axes=self._attention_axes)
        norm_axes = tuple(
            range(attn_scores_rank - len(self._attention_axes), attn_scores_rank)
        )
        self._softmax = keras.layers.Softmax(axis=norm_axes, dtype=self.dtype_policy)
        self._dropout_layer = Dropout(
            rate=self._dropout, dtype=self.dtype_policy, seed=self.seed
        )

    # Projections ---------------------------------------------------------

    def _fusable_denses(self, *denses):
        """Whether these projections can run as one matmul: not when a
        sublayer is quantized (its kernel is int8/int4/float8 with scales,
        only its own call knows how to apply it) or regularizes its
        activity (its own call records that loss)."""
        return (
            self._fusable
            and self._activity_regularizer is None
            and all(d.quantization_mode is None for d in denses)
        )

    def project_query(self, query):
        """`(batch, T, dim)` to per-head queries `(batch, T, heads, key_dim)`."""
        return self._query_dense(query)

    def project_key_value(self, key, value=None):
        """Per-head keys and values `(batch, T, heads, dim)` of the inputs."""
        value = key if value is None else value
        denses = (self._key_dense, self._value_dense)
        if (
            key is value
            and key.shape[-1] == self._key_dense.kernel.shape[0]
            and self._fusable_denses(*denses)
        ):
            k, v = _concatenate_projections(self, key, denses)
            return k, v
        return self._key_dense(key), self._value_dense(value)

    def _project_self_attention(self, x):
        denses = (self._query_dense, self._key_dense, self._value_dense)
        dims = {d.kernel.shape[0] for d in denses}
        if len(dims) == 1 and self._fusable_denses(*denses):
            return _concatenate_projections(self, x, denses)
        return [dense(x) for dense in denses]

    def compute_cache(self, value, key=None, layout="stacked"):
        """The key/value cache of `value`.

        Used to compute the cross-attention keys and values of an encoder
        output once before decoding; pass the result as `cache` with
        `cache_update_index=None` on every step.

        Args:
            value: `(batch, T, dim)`.
            key: `(batch, T, dim)`, default `value`.
            layout: `"stacked"`, one `(batch, 2, T, heads, key_dim)`
                tensor (keras-hub's layout), or `"split"`, a `(keys,
                values)` pair of `(batch, heads, T, key_dim)` tensors,
                which single-query decoding steps read faster (batched
                matmuls over the cache in place).

        Returns:
            The cache in the requested layout.
        """
        self._check_cache_dims()
        check_cache_layout(layout)
        k, v = self.project_key_value(value if key is None else key, value)
        v = ops.cast(v, k.dtype)
        if layout == "split":
            return ops.transpose(k, (0, 2, 1, 3)), ops.transpose(v, (0, 2, 1, 3))
        return ops.stack([k, v], axis=1)

    def _check_split_cache(self, cache):
        if len(cache) != 2 or any(len(t.shape) != 4 for t in cache):
            raise ValueError(
                "A split `cache` must be a (keys, values) pair of (batch, "
                "num_heads, max_length, key_dim) tensors. Received: "
                f"{[tuple(t.shape) for t in cache]}"
            )
        expected = (self.num_heads, self.key_dim)
        for t in cache:
            if (t.shape[1], t.shape[3]) != expected:
                raise ValueError(
                    "A split `cache` must be a (keys, values) pair of (batch, "
                    f"num_heads={self.num_heads}, max_length, key_dim="
                    f"{self.key_dim}) tensors. Received: {tuple(t.shape)}"
                )

    def _check_cache_dims(self):
        if self.value_dim != self.key_dim:
            raise ValueError(
                "A key/value cache needs `value_dim == key_dim`. Received: "
                f"key_dim={self.key_dim}, value_dim={self.value_dim}"
            )
        if not self._sequence_inputs:
            raise ValueError(
                "A key/value cache needs (batch, length, dim) inputs and the "
                "default `attention_axes`."
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
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
        cache=None,
        cache_update_index=None,
        cache_rows=None,
    ):
        reuse_cache = cache is not None and cache_update_index is None
        if value is None and not reuse_cache:
            raise ValueError(
                "`value` is required, except with a `cache` and no "
                "`cache_update_index` (keys and values read from the cache)."
            )
        if cache is None and cache_update_index is not None:
            raise ValueError(
                "`cache_update_index` needs a `cache`. Received: cache=None, "
                f"cache_update_index={cache_update_index}"
            )
        if cache_rows is not None and cache_update_index is None:
            raise ValueError(
                "`cache_rows` needs a `cache` being updated: pass "
                "`cache_update_index` too."
            )
        if not self._sequence_inputs:
            if cache is not None:
                self._check_cache_dims()
            # Keras' own computation, through our `_compute_attention`.
            return super().call(
                query, value, key=key, query_mask=query_mask,
                value_mask=value_mask, key_mask=key_mask,
                attention_mask=attention_mask,
                return_attention_scores=return_attention_scores,
                training=training, use_causal_mask=use_causal_mask,
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
        # The masks are handled here: hidden from the projection sublayers
        # (which do not support masking and would warn) during the call,
        # then given back (Keras' layer drops them from the caller's
        # tensors, which hides them from the next layer reading them).
        saved = []
        for tensor in (query, value, key):
            if tensor is not None and keras_mask(tensor) is not None:
                saved.append((tensor, keras_mask(tensor)))
                set_keras_mask(tensor, None)
        try:
            return self._attend(
                query, value, key, query_mask, value_mask, key_mask,
                attention_mask, return_attention_scores, training,
                use_causal_mask, cache, cache_update_index, reuse_cache,
                cache_rows,
            )
        finally:
            for tensor, mask in saved:
                set_keras_mask(tensor, mask)

    def _attend(
        self, query, value, key, query_mask, value_mask, key_mask,
        attention_mask, return_attention_scores, training, use_causal_mask,
        cache, cache_update_index, reuse_cache, cache_rows=None,
    ):
        gate = self._gate_dense(query) if self._use_gate else None
        if reuse_cache:
            q = self.project_query(query)
        elif query is value and key is value:
            q, k, v = self._project_self_attention(query)
        else:
            q = self.project_query(query)
            k, v = self.project_key_value(key, value)

        causal_offset = 0
        heads_first = cache is not None and is_split_cache(cache)
        group = self._cache_group(q, cache) if reuse_cache else 1
        if group > 1:
            self._check_groupable(use_causal_mask, attention_mask)
            # Beam search: `group` query rows per cache row (its beams, rows
            # `b * group + j`). They become `group` query positions of one
            # row, so each cached key/value is read once for all of them
            # (one small matmul) instead of from `group` copies of the cache.
            if value_mask is not None and value_mask.shape[0] == q.shape[0]:
                # Given per query row: each group's rows share one source.
                value_mask = ops.reshape(value_mask, (-1, group) + tuple(value_mask.shape[1:]))[:, 0]
            q = _fold_rows(q, group)
            if query_mask is not None:
                query_mask = _fold_rows(query_mask, group)
            if attention_mask is not None:
                attention_mask = _fold_rows(attention_mask, group)
        if heads_first:
            self._check_cache_dims()
            self._check_split_cache(cache)
            keys, values = cache
            if cache_update_index is None:
                k, v = keys, values
            else:
                # In place, as for the stacked cache: one dynamic-update-slice
                # per tensor into the loop's buffers.
                keys = ops.slice_update(
                    keys, (0, 0, cache_update_index, 0),
                    ops.cast(ops.transpose(k, (0, 2, 1, 3)), keys.dtype),
                )
                values = ops.slice_update(
                    values, (0, 0, cache_update_index, 0),
                    ops.cast(ops.transpose(v, (0, 2, 1, 3)), values.dtype),
                )
                cache = (keys, values)
                if cache_rows is None:
                    k, v = keys, values
                else:
                    k, v = _read_split_cache_rows(keys, values, cache_rows)
                causal_offset = cache_update_index
                value_mask = key_mask = None
        elif cache is not None:
            self._check_cache_dims()
            if len(cache.shape) != 5 or cache.shape[1] != 2:
                raise ValueError(
                    "`cache` must have shape (batch, 2, max_length, "
                    "num_heads, key_dim), or be a (keys, values) pair of "
                    "(batch, num_heads, max_length, key_dim) tensors. "
                    f"Received: cache.shape={cache.shape}"
                )
            if cache_update_index is None:
                k, v = cache[:, 0], cache[:, 1]
            else:
                # One in-place dynamic-update-slice of the whole cache
                # (XLA reuses the loop buffer) rather than two updates and
                # a re-stack, which copy the cache every step.
                new_key_value = ops.stack(
                    [ops.cast(k, cache.dtype), ops.cast(v, cache.dtype)], axis=1
                )
                cache = ops.slice_update(
                    cache, (0, 0, cache_update_index, 0, 0), new_key_value
                )
                if cache_rows is None:
                    k, v = cache[:, 0], cache[:, 1]
                else:
                    k, v = _read_cache_rows(cache, cache_rows)
                causal_offset = cache_update_index
                # This call's padding masks describe its own tokens, not the
                # cache slots.
                value_mask = key_mask = None

        mask = merge_attention_masks(
            ops.shape(q)[1],
            ops.shape(k)[2 if heads_first else 1],
            query_mask=query_mask,
            value_mask=value_mask,
            key_mask=key_mask,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
            causal_offset=causal_offset,
            sliding_window=self._sliding_window,
        )
        attended, scores = self._compute_attention(
            q,
            ops.cast(k, q.dtype),
            ops.cast(v, q.dtype),
            mask,
            training,
            return_attention_scores,
            heads_first=heads_first,
        )
        if group > 1:
            attended = _unfold_rows(attended, group)
            if scores is not None:
                scores = _unfold_scores(scores, group)
        if gate is not None:
            attended = attended * ops.cast(gate, attended.dtype)
        outputs = self._output_dense(attended)

        results = (outputs,)
        if cache is not None:
            results += (cache,)
        if return_attention_scores:
            results += (scores,)
        return results[0] if len(results) == 1 else results

    @staticmethod
    def _cache_group(query, cache):
        """How many query rows share each row of a reused `cache`: 1
        unless both batch sizes are static and the query's is a multiple of
        the cache's (beam search's cross-attention)."""
        cache_batch = (cache[0] if is_split_cache(cache) else cache).shape[0]
        query_batch = query.shape[0]
        if cache_batch is None or query_batch is None or cache_batch == query_batch:
            return 1
        if cache_batch == 0 or query_batch % cache_batch:
            raise ValueError(
                "A reused `cache` serves queries of its own batch size, or of "
                "a multiple of it (that many consecutive query rows per cache "
                f"row). Received: query batch {query_batch}, cache batch "
                f"{cache_batch}"
            )
        return query_batch // cache_batch

    def _check_groupable(self, use_causal_mask, attention_mask):
        if use_causal_mask or self._sliding_window is not None:
            raise ValueError(
                "A reused `cache` shared by several query rows (query batch a "
                "multiple of the cache's) does not support `use_causal_mask` "
                "or `sliding_window`: repeat the cache to the query's batch."
            )
        if attention_mask is not None and len(attention_mask.shape) != 3:
            raise ValueError(
                "A reused `cache` shared by several query rows takes a "
                "`(batch, Tq, Tv)` `attention_mask` only. Received shape "
                f"{attention_mask.shape}"
            )

    def _use_fused_kernel(self, training, return_attention_scores):
        if return_attention_scores or (self._dropout > 0 and training):
            return False
        if self._value_dim != self._key_dim:
            # The fused kernels take one head size for queries, keys and
            # values (`jax.nn.dot_product_attention` raises "value shape
            # should be [B, S, K, H]", seen on an H200); our einsum path
            # takes any `value_dim`.
            if self._flash_attention:
                raise ValueError(
                    "`flash_attention=True` needs `value_dim` equal to "
                    f"`key_dim`; received key_dim={self._key_dim}, "
                    f"value_dim={self._value_dim}. Leave `flash_attention` "
                    "at None (or False) to use the einsum path."
                )
            return False
        if self._flash_attention is not None:
            return bool(self._flash_attention)
        return _fused_kernel_by_default()

    def _compute_attention(
        self,
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
        heads_first=False,
    ):
        """Scaled dot-product attention of projected `(batch, T, heads,
        dim)` tensors (or Keras' higher-rank layouts): `(outputs, scores)`,
        the softmax in float32, fully masked rows finite. `heads_first`:
        `key` and `value` are `(batch, heads, T, dim)` (a split cache)."""
        if self._flash_attention and return_attention_scores:
            raise ValueError(
                "Returning attention scores is not supported when flash "
                "attention is enabled. Please disable flash attention to access"
                " attention scores."
            )
        mask = attention_mask
        if mask is not None:
            mask = ops.cast(mask, "bool")
        if use_causal_mask:
            causal = ops.expand_dims(
                causal_mask(ops.shape(query)[1], ops.shape(key)[1]), 0
            )
            mask = causal if mask is None else ops.logical_and(mask, causal)
        dropout = self._dropout_layer if self._dropout > 0 else None
        if len(query.shape) == 4:
            if mask is not None:
                while len(mask.shape) < 3:
                    mask = ops.expand_dims(mask, 0)
            if self._use_fused_kernel(training, return_attention_scores):
                if heads_first:
                    # The fused kernels take (batch, T, heads, dim).
                    key = ops.transpose(key, (0, 2, 1, 3))
                    value = ops.transpose(value, (0, 2, 1, 3))
                outputs = _fused_kernel_attention(
                    query, key, value, mask, self._flash_attention
                )
                return outputs, None
            attend = (
                _heads_first_attention if heads_first else scaled_dot_product_attention
            )
            return attend(query, key, value, mask, dropout=dropout, training=training)
        # Higher-rank inputs with `attention_axes`: Keras' equations, our
        # softmax.
        dtype = query.dtype
        query = query * ops.cast(1.0 / math.sqrt(self._key_dim), dtype)
        logits = ops.einsum(self._dot_product_equation, key, query)
        if mask is not None:
            axis = -len(self._attention_axes) * 2 - 1
            while len(mask.shape) < len(logits.shape):
                mask = ops.expand_dims(mask, axis=axis)
        rank = len(logits.shape)
        norm_axes = tuple(range(rank - len(self._attention_axes), rank))
        logits = ops.cast(logits, "float32")
        if mask is not None:
            logits = ops.where(mask, logits, _MASKED_LOGIT)
        # exp(x - logsumexp(x)): a softmax over several axes (oneDNN's
        # softmax kernel takes at most rank 5, as Keras' Softmax knows).
        weights = ops.exp(
            logits - ops.logsumexp(logits, axis=norm_axes, keepdims=True)
        )
        weights = ops.cast(weights, dtype)
        dropped = weights if dropout is None else dropout(weights, training=training)
        outputs = ops.einsum(self._combine_equation, dropped, value)
        return outputs, weights

    # Shapes and config ---------------------------------------------------

    def compute_output_shape(self, query_shape, value_shape=None, key_shape=None):
        value_shape = query_shape if value_shape is None else value_shape
        return super().compute_output_shape(query_shape, value_shape, key_shape)

    def compute_output_spec(
        self,
        query,
        value=None,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
        cache=None,
        cache_update_index=None,
        cache_rows=None,
    ):
        if len(query.shape) != 3:
            # Keras' higher-rank layouts: trace the call for the shapes.
            return _trace_output_spec(
                self.call, query, value, key=key,
                attention_mask=attention_mask,
                return_attention_scores=return_attention_scores,
                use_causal_mask=use_causal_mask,
            )
        value_shape = query.shape if value is None else value.shape
        key_shape = None if key is None else key.shape
        outputs = keras.KerasTensor(
            self.compute_output_shape(query.shape, value_shape, key_shape),
            dtype=self.compute_dtype,
        )
        results = (outputs,)
        key_length = None if value is None else value.shape[1]
        if cache is not None:
            if is_split_cache(cache):
                results += (
                    tuple(keras.KerasTensor(t.shape, dtype=t.dtype) for t in cache),
                )
            else:
                results += (keras.KerasTensor(cache.shape, dtype=cache.dtype),)
            key_length = cache[0].shape[2] if is_split_cache(cache) else cache.shape[2]
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
        # Quantized sublayers are rebuilt quantized by `load_model` only if
        # the config says so: a dtype policy map keyed by their paths.
        config["dtype"] = dtype_policy_config(self)
        return config
