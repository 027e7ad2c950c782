"""Text preprocessing with TensorFlow Text."""

from keras_xformer.text import sentences
from keras_xformer.text import spans
from keras_xformer.text.sentencepiece import SentencePieceTokenizer
from keras_xformer.text.spans import SpanProtector
from keras_xformer.text.wordpiece import WordPieceTokenizer

__all__ = ["SentencePieceTokenizer", "SpanProtector", "WordPieceTokenizer", "sentences", "spans"]
