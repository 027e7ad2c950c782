"""The Transformer encoder (Vaswani et al. 2017, 3.1)."""

import keras

from keras_xformer.layers._block import BlockBase
from keras_xformer.layers._block import StackBase
from keras_xformer.layers._block import check_width
from keras_xformer.layers._block import padding_mask_or_keras_mask

_register = keras.saving.register_keras_serializable(package="keras_xformer")


@_register
class TransformerEncoderBlock(BlockBase):
    """One encoder layer: self-attention, then a position-wise feed-forward
    network, each wrapped in a residual connection and LayerNorm.

    The model width is read from the input; `key_dim = width // num_heads`.

    Args:
        num_heads: attention heads; must divide the input width.
        intermediate_dim: inner width of the feed-forward network, `d_ff`.
        dropout: the paper's `P_drop`, applied to each sublayer output
            before the residual add.
        activation: feed-forward activation.
        norm_first: pre-LN (`x + f(LN(x))`) instead of the paper's post-LN
            (`LN(x + f(x))`).
        layer_norm_epsilon: LayerNorm epsilon.
        kernel_initializer, bias_initializer: of every dense projection.
        **kwargs: other `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(batch, length, width)`.
        padding_mask: `(batch, length)`, 1 for tokens, 0 for padding; the
            Keras implicit mask of `inputs` when not given.
        attention_mask: `(batch, length, length)`, 1 = attend.
        return_attention_scores: also return `(batch, heads, length,
            length)` attention weights.
        training: whether dropout is active.

    Returns:
        `(batch, length, width)` (and the scores when asked).

    Example:

    >>> inputs = keras.Input((None, 32))
    >>> outputs = TransformerEncoderBlock(4, 64)(inputs)
    >>> keras.Model(inputs, outputs).output_shape
    (None, None, 32)

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762), 3.1.
    """

    def build(self, inputs_shape):
        width = inputs_shape[-1]
        key_dim = check_width(width, self.num_heads)
        self.self_attention = self._attention("self_attention", key_dim)
        self.self_attention.build(inputs_shape, inputs_shape)
        self.self_attention_norm = self._norm("self_attention_norm")
        self.self_attention_norm.build(inputs_shape)
        self.self_attention_dropout = self._dropout()
        self.feed_forward = self._feed_forward()
        self.feed_forward.build(inputs_shape)
        self.feed_forward_norm = self._norm("feed_forward_norm")
        self.feed_forward_norm.build(inputs_shape)
        self.feed_forward_dropout = self._dropout()

    def call(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
    ):
        padding_mask = padding_mask_or_keras_mask(padding_mask, inputs)

        def attend(x):
            # Scores only when asked: without them the attention may run a
            # fused (flash) kernel.
            results = self.self_attention(
                x,
                x,
                query_mask=padding_mask,
                value_mask=padding_mask,
                attention_mask=attention_mask,
                return_attention_scores=return_attention_scores,
                training=training,
            )
            return results if return_attention_scores else (results, None)

        x, scores = self._residual(
            inputs,
            self.self_attention_norm,
            self.self_attention_dropout,
            attend,
            training,
        )
        x, _ = self._residual(
            x,
            self.feed_forward_norm,
            self.feed_forward_dropout,
            lambda y: (self.feed_forward(y, training=training), None),
            training,
        )
        return (x, scores) if return_attention_scores else x


@_register
class TransformerEncoder(StackBase):
    """`num_layers` stacked `TransformerEncoderBlock`s (a final LayerNorm
    when `norm_first`).

    Args:
        num_layers: number of blocks `N`.
        num_heads, intermediate_dim, dropout, activation, norm_first,
        layer_norm_epsilon, kernel_initializer, bias_initializer: as in
            `TransformerEncoderBlock`.

    Call arguments:
        inputs: `(batch, length, width)`.
        padding_mask: `(batch, length)`; the Keras mask of `inputs` when not
            given.
        training: whether dropout is active.

    Returns:
        `(batch, length, width)`, carrying the padding mask as its Keras
        mask.

    Example:

    >>> encoder = TransformerEncoder(2, num_heads=4, intermediate_dim=64)
    >>> encoder(keras.ops.ones((2, 5, 32))).shape
    (2, 5, 32)
    """

    block_class = TransformerEncoderBlock

    def build(self, inputs_shape):
        for block in self.blocks:
            block.build(inputs_shape)
        if self.final_norm is not None:
            self.final_norm.build(inputs_shape)

    def call(self, inputs, padding_mask=None, training=None):
        padding_mask = padding_mask_or_keras_mask(padding_mask, inputs)
        x = inputs
        for block in self.blocks:
            x = block(x, padding_mask=padding_mask, training=training)
        return self._finish(x)

    def compute_mask(self, inputs, previous_mask=None):
        return previous_mask
