"""Text preprocessing with TensorFlow Text."""

from keras_xformer.text.wordpiece import WordPieceTokenizer

__all__ = ["WordPieceTokenizer"]
