"""Keras 3 layers of the Transformer (Vaswani et al. 2017)."""

from keras_xformer.layers.attention import MultiHeadAttention
from keras_xformer.layers.attention import scaled_dot_product_attention
from keras_xformer.layers.decoder import TransformerDecoder
from keras_xformer.layers.decoder import TransformerDecoderBlock
from keras_xformer.layers.encoder import TransformerEncoder
from keras_xformer.layers.encoder import TransformerEncoderBlock
from keras_xformer.layers.feed_forward import PositionwiseFeedForward
from keras_xformer.layers.positional_encoding import LearnedPositionalEncoding
from keras_xformer.layers.positional_encoding import SinusoidalPositionalEncoding
from keras_xformer.layers.positional_encoding import TokenAndPositionEmbedding

__all__ = [
    "LearnedPositionalEncoding",
    "MultiHeadAttention",
    "PositionwiseFeedForward",
    "SinusoidalPositionalEncoding",
    "TokenAndPositionEmbedding",
    "TransformerDecoder",
    "TransformerDecoderBlock",
    "TransformerEncoder",
    "TransformerEncoderBlock",
    "scaled_dot_product_attention",
]
