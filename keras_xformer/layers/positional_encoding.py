"""Positional encodings (Vaswani et al. 2017, section 3.5) and token embeddings."""

import math

import keras
from keras import ops
from keras import quantizers
from keras.src.quantizers.quantizers import dequantize_with_sz_map

from keras_xformer.layers._dropout import Dropout
from keras_xformer.layers._lora import LoraMixin
from keras_xformer.layers._masking import sequence_mask_from_ids
from keras_xformer.layers._quantization import dtype_policy_config

_register = keras.saving.register_keras_serializable(package="keras_xformer")


def _check_start_index(start_index):
    if isinstance(start_index, int) and start_index < 0:
        raise ValueError(
            f"`start_index` must be >= 0. Received: start_index={start_index}"
        )


def sinusoid(positions, dim, max_wavelength=10000, dtype="float32"):
    """The paper's sinusoid for the given positions, interleaved sin/cos.

    `PE[p, 2i] = sin(p / max_wavelength**(2i / dim))` and
    `PE[p, 2i + 1] = cos(p / max_wavelength**(2i / dim))`.

    Args:
        positions: a `(length,)` tensor of (possibly offset) positions.
        dim: the model width `d_model`.
        max_wavelength: the paper's 10000.
        dtype: the dtype of the returned table.

    Returns:
        A `(length, dim)` tensor.
    """
    # Angles are computed in float32 whatever the layer's dtype: at position
    # 10_000 a float16 angle has a resolution of 8 radians.
    positions = ops.cast(positions, "float32")
    pair_index = ops.arange(0, (dim + 1) // 2, dtype="float32")
    inverse_frequency = ops.power(
        ops.cast(max_wavelength, "float32"), -2.0 * pair_index / dim
    )
    angles = ops.expand_dims(positions, -1) * inverse_frequency  # (L, ceil(d/2))
    table = ops.stack([ops.sin(angles), ops.cos(angles)], axis=-1)
    table = ops.reshape(table, (-1, 2 * ((dim + 1) // 2)))[:, :dim]
    return ops.cast(table, dtype)


@_register
class SinusoidalPositionalEncoding(keras.layers.Layer):
    """Adds the fixed sinusoidal positional encoding of Vaswani et al. (2017).

    The encoding is interleaved as in the paper's formula:
    `PE[p, 2i] = sin(p / max_wavelength**(2i/d))` and
    `PE[p, 2i+1] = cos(p / max_wavelength**(2i/d))`. There is no length limit:
    the table is computed for the positions the call needs.

    Args:
        max_wavelength: the largest wavelength of the sinusoids (the paper's
            10000).
        **kwargs: other `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a `(batch, length, dim)` tensor.
        start_index: an int or scalar int tensor: the position of the first
            input step (non-zero for incremental decoding).

    Returns:
        `inputs + PE[start_index : start_index + length]`, same shape and
        dtype as `inputs`. Keras masks pass through unchanged.

    Example:

    >>> layer = SinusoidalPositionalEncoding()
    >>> layer(keras.ops.zeros((2, 5, 8))).shape
    (2, 5, 8)

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762), 3.5.
    """

    def __init__(self, max_wavelength=10000, **kwargs):
        super().__init__(**kwargs)
        if max_wavelength <= 0:
            raise ValueError(
                "`max_wavelength` must be positive. "
                f"Received: max_wavelength={max_wavelength}"
            )
        self.max_wavelength = max_wavelength
        self.supports_masking = True
        self.built = True

    def call(self, inputs, start_index=0):
        _check_start_index(start_index)
        length = ops.shape(inputs)[-2]
        positions = ops.arange(length) + start_index
        return inputs + sinusoid(
            positions, inputs.shape[-1], self.max_wavelength, inputs.dtype
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"max_wavelength": self.max_wavelength})
        return config


@_register
class LearnedPositionalEncoding(keras.layers.Layer):
    """Adds a trainable position embedding table (Vaswani et al. 2017, 3.5).

    Args:
        max_length: the number of positions in the table; longer inputs are
            a `ValueError` where the length is known when the layer is called.
        initializer: the initializer of the table.
        **kwargs: other `keras.layers.Layer` arguments.

    Call arguments:
        inputs: a `(batch, length, dim)` tensor.
        start_index: an int or scalar int tensor, the position of the first
            input step.

    Returns:
        `inputs + table[start_index : start_index + length]`.

    Example:

    >>> layer = LearnedPositionalEncoding(max_length=16)
    >>> layer(keras.ops.zeros((2, 5, 8))).shape
    (2, 5, 8)
    """

    def __init__(self, max_length, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if max_length is None or int(max_length) <= 0:
            raise ValueError(
                "`max_length` must be a positive int. "
                f"Received: max_length={max_length}"
            )
        self.max_length = int(max_length)
        self.initializer = keras.initializers.get(initializer)
        self.supports_masking = True

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(
                "The last dimension of the inputs must be known. "
                f"Received: input_shape={input_shape}"
            )
        self._check_length(input_shape[-2], 0)
        self.position_embeddings = self.add_weight(
            name="position_embeddings",
            shape=(self.max_length, input_shape[-1]),
            initializer=self.initializer,
        )

    def _check_length(self, length, start_index):
        if isinstance(length, int) and isinstance(start_index, int):
            if start_index + length > self.max_length:
                raise ValueError(
                    f"The input has {length} positions starting at "
                    f"{start_index}, but this LearnedPositionalEncoding "
                    f"holds only max_length={self.max_length} positions. "
                    "Build it with a larger `max_length` or truncate the "
                    "inputs."
                )

    def call(self, inputs, start_index=0):
        _check_start_index(start_index)
        self._check_length(inputs.shape[-2], start_index)
        length = ops.shape(inputs)[-2]
        dim = inputs.shape[-1]
        table = ops.convert_to_tensor(self.position_embeddings)
        positions = ops.slice(table, (start_index, 0), (length, dim))
        return inputs + ops.cast(positions, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_length": self.max_length,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config


@_register
class TokenAndPositionEmbedding(LoraMixin, keras.layers.Layer):
    """Token embedding, scaled by `sqrt(embedding_dim)`, plus positions.

    Id 0 is padding: with `mask_zero=True` (default) the output carries a
    Keras mask that downstream layers (our blocks, `keras.layers.*`) read.

    Args:
        vocabulary_size: the number of token ids.
        embedding_dim: the model width `d_model`.
        max_length: positions of the learned table (needed for
            `positional="learned"`; optional for the sinusoid).
        positional: `"sinusoidal"` (default) or `"learned"`.
        mask_zero: whether id 0 is padding and masked.
        scale_embeddings: multiply token embeddings by `sqrt(embedding_dim)`
            as in the paper (section 3.4).
        dropout: dropout rate applied to the sum (the paper's `P_drop`).
        embeddings_initializer: initializer of the token embedding matrix.
        **kwargs: other `keras.layers.Layer` arguments.

    Call arguments:
        token_ids: `(batch, length)` integer ids.
        start_index: an int or scalar int tensor, the position of the first
            id (for incremental decoding).
        training: whether dropout is active.

    Returns:
        `(batch, length, embedding_dim)` embeddings.

    Example:

    >>> layer = TokenAndPositionEmbedding(100, 16)
    >>> layer(keras.ops.array([[5, 6, 0]])).shape
    (1, 3, 16)
    """

    def __init__(
        self,
        vocabulary_size,
        embedding_dim,
        max_length=None,
        positional="sinusoidal",
        mask_zero=True,
        scale_embeddings=True,
        dropout=0.0,
        embeddings_initializer="uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if positional not in ("sinusoidal", "learned"):
            raise ValueError(
                '`positional` must be "sinusoidal" or "learned". '
                f"Received: positional={positional!r}"
            )
        if positional == "learned" and max_length is None:
            raise ValueError('`positional="learned"` needs `max_length`.')
        if int(vocabulary_size) <= 0 or int(embedding_dim) <= 0:
            raise ValueError(
                "`vocabulary_size` and `embedding_dim` must be positive. "
                f"Received: vocabulary_size={vocabulary_size}, "
                f"embedding_dim={embedding_dim}"
            )
        self.vocabulary_size = int(vocabulary_size)
        self.embedding_dim = int(embedding_dim)
        self.max_length = max_length
        self.positional = positional
        self.mask_zero = mask_zero
        self.scale_embeddings = scale_embeddings
        self.dropout = dropout
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer
        )
        self.token_embedding = keras.layers.Embedding(
            self.vocabulary_size,
            self.embedding_dim,
            embeddings_initializer=self.embeddings_initializer,
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        if positional == "learned":
            self.position_encoding = LearnedPositionalEncoding(
                max_length, dtype=self.dtype_policy, name="position_encoding"
            )
        else:
            self.position_encoding = SinusoidalPositionalEncoding(
                dtype=self.dtype_policy, name="position_encoding"
            )
        self.dropout_layer = Dropout(
            dropout, dtype=self.dtype_policy
        )
        self.supports_masking = mask_zero

    @property
    def embeddings(self):
        """The `(vocabulary_size, embedding_dim)` token matrix."""
        return self.token_embedding.embeddings

    def reverse(self, inputs):
        """`inputs @ embeddings^T`: logits over the vocabulary from the token
        matrix (tied output embeddings, section 3.4), `(batch, T, dim)` to
        `(batch, T, vocabulary_size)` in the inputs' dtype. Reads an int8 /
        int4 quantized table as it is and rescales the `vocabulary_size`
        logits, rather than dequantizing the whole table every call."""
        layer = self.token_embedding
        mode = layer.quantization_mode
        dtype = inputs.dtype
        if mode is None:
            table = ops.cast(layer.embeddings, dtype)
            return ops.matmul(inputs, ops.transpose(table))
        if mode not in ("int8", "int4"):
            raise ValueError(
                f"Tied output embeddings support int8 and int4 quantization; "
                f"this embedding is quantized as {mode!r}. Leave it out with "
                "`model.quantize(mode, filters=...)`."
            )
        table = layer._embeddings
        if mode == "int4":
            table = quantizers.unpack_int4(table, layer._orig_output_dim, axis=-1)
            if getattr(layer, "_int4_block_size", None) not in (None, -1):
                # Grouped scales and zero points along the width: the
                # table is dequantized as Keras' own lookup does per row.
                table = dequantize_with_sz_map(
                    ops.cast(table, dtype),
                    layer.embeddings_scale,
                    layer.embeddings_zero,
                    layer.g_idx,
                    group_axis=-1,
                )
                return ops.matmul(inputs, ops.transpose(ops.cast(table, dtype))) + (
                    self._lora_logits(inputs) if layer.lora_enabled else 0
                )
        # Row v of the float table is table[v] / scale[v]: the scale
        # divides logit v.
        logits = ops.matmul(inputs, ops.transpose(ops.cast(table, dtype)))
        logits = logits / ops.cast(layer.embeddings_scale, dtype)
        if layer.lora_enabled:
            logits = logits + self._lora_logits(inputs)
        return logits

    def _lora_logits(self, inputs):
        layer, dtype = self.token_embedding, inputs.dtype
        adapter = ops.matmul(
            ops.matmul(inputs, ops.transpose(ops.cast(layer.lora_embeddings_b, dtype))),
            ops.transpose(ops.cast(layer.lora_embeddings_a, dtype)),
        )
        return ops.cast(layer.lora_alpha / layer.lora_rank, dtype) * adapter

    def build(self, input_shape):
        self.token_embedding.build(input_shape)
        self.position_encoding.build(
            tuple(input_shape) + (self.embedding_dim,)
        )

    def call(self, token_ids, start_index=0, training=None):
        x = self.token_embedding(token_ids)
        if self.scale_embeddings:
            x = x * ops.cast(math.sqrt(self.embedding_dim), x.dtype)
        x = self.position_encoding(x, start_index=start_index)
        return self.dropout_layer(x, training=training)

    def compute_mask(self, token_ids, mask=None):
        if not self.mask_zero:
            return None
        return sequence_mask_from_ids(token_ids)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.embedding_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "embedding_dim": self.embedding_dim,
                "max_length": self.max_length,
                "positional": self.positional,
                "mask_zero": self.mask_zero,
                "scale_embeddings": self.scale_embeddings,
                "dropout": self.dropout,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
            }
        )
        config["dtype"] = dtype_policy_config(self)
        return config


__all__ = [
    "SinusoidalPositionalEncoding",
    "LearnedPositionalEncoding",
    "TokenAndPositionEmbedding",
    "sinusoid",
]
