"""The one place where attention masks are built and combined.

Inside the package a mask is always boolean with `True` meaning "attend".
Padding masks are `(batch, length)`; attention masks broadcast to
`(batch, query_length, key_length)`.
"""

from keras import ops
from keras.src.backend import get_keras_mask


def keras_mask(x):
    """The Keras implicit mask attached to `x`, or `None`."""
    if x is None:
        return None
    return get_keras_mask(x)


def sequence_mask_from_ids(token_ids, padding_id=0):
    """`(batch, length)` boolean mask, `False` where the id is padding."""
    return ops.not_equal(token_ids, padding_id)


def causal_mask(query_length, key_length, offset=0):
    """`(query_length, key_length)` mask: query `i` sees keys `j <= offset + i`.

    `offset` is where the queries start in absolute positions (the cache
    update index during incremental decoding); it may be a scalar tensor.
    """
    rows = ops.expand_dims(ops.arange(query_length) + offset, -1)
    cols = ops.expand_dims(ops.arange(key_length), 0)
    return ops.greater_equal(rows, cols)


def sliding_window_mask(query_length, key_length, window, offset=0):
    """`(query_length, key_length)` band: query `i` sees keys `j` with
    `|offset + i - j| < window` (Keras' `sliding_window`; with a causal
    mask it becomes Mistral's causal window)."""
    rows = ops.expand_dims(ops.arange(query_length) + offset, -1)
    cols = ops.expand_dims(ops.arange(key_length), 0)
    return ops.less(ops.abs(rows - cols), window)


def _check_rank(name, mask, rank):
    ranks = rank if isinstance(rank, tuple) else (rank,)
    if mask is not None and len(mask.shape) not in ranks:
        ranks = " or ".join(str(r) for r in ranks)
        raise ValueError(
            f"`{name}` must have rank {ranks}, but got shape {mask.shape}."
        )


def _check_dim(name, mask, axis, expected, what):
    actual = mask.shape[axis]
    # A 1 broadcasts, as in Keras' layer.
    if actual not in (None, 1) and expected is not None and actual != expected:
        raise ValueError(
            f"`{name}` has shape {mask.shape}, but its dimension {axis} must "
            f"equal the {what} ({expected})."
        )


def merge_attention_masks(
    query_length,
    key_length,
    query_mask=None,
    value_mask=None,
    key_mask=None,
    attention_mask=None,
    use_causal_mask=False,
    causal_offset=0,
    sliding_window=None,
):
    """Combines padding, causal and explicit masks with a logical AND.

    Args:
        query_length: `Tq`, an int or scalar tensor.
        key_length: `Tk`, an int or scalar tensor.
        query_mask: `(batch, Tq)`, or `None`.
        value_mask: `(batch, Tk)`, or `None`.
        key_mask: `(batch, Tk)`, or `None`.
        attention_mask: `(batch, Tq, Tk)` (1 = attend), `(Tq, Tk)` or
            `(batch, heads, Tq, Tk)`, or `None`.
        use_causal_mask: add the causal mask.
        causal_offset: absolute position of the first query.
        sliding_window: keys within `sliding_window - 1` positions of the
            query only, or `None`.

    Returns:
        A boolean mask broadcastable to `(batch, Tq, Tk)` (to `(batch,
        heads, Tq, Tk)` when `attention_mask` has heads), or `None` when
        nothing is masked (so no mask tensor is ever materialized for free).
    """
    static_q = query_length if isinstance(query_length, int) else None
    static_k = key_length if isinstance(key_length, int) else None
    merged = None

    def _and(mask):
        nonlocal merged
        merged = mask if merged is None else ops.logical_and(merged, mask)

    if query_mask is not None:
        _check_rank("query_mask", query_mask, 2)
        _check_dim("query_mask", query_mask, 1, static_q, "query length")
        _and(ops.expand_dims(ops.cast(query_mask, "bool"), -1))
    for name, mask in (("value_mask", value_mask), ("key_mask", key_mask)):
        if mask is not None:
            _check_rank(name, mask, 2)
            _check_dim(name, mask, 1, static_k, "key/value length")
            _and(ops.expand_dims(ops.cast(mask, "bool"), -2))
    if use_causal_mask:
        _and(
            ops.expand_dims(
                causal_mask(query_length, key_length, causal_offset), 0
            )
        )
    if sliding_window is not None:
        _and(
            ops.expand_dims(
                sliding_window_mask(
                    query_length, key_length, sliding_window, causal_offset
                ),
                0,
            )
        )
    if attention_mask is not None:
        _check_rank("attention_mask", attention_mask, (2, 3, 4))
        _check_dim("attention_mask", attention_mask, -2, static_q, "query length")
        _check_dim("attention_mask", attention_mask, -1, static_k, "key length")
        attention_mask = ops.cast(attention_mask, "bool")
        if len(attention_mask.shape) == 2:
            attention_mask = ops.expand_dims(attention_mask, 0)
        if len(attention_mask.shape) == 4 and merged is not None:
            # Per-head masks: the others gain a heads axis.
            merged = ops.expand_dims(merged, 1)
        _and(attention_mask)
    return merged
