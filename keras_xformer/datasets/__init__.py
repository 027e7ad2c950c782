"""Corpora: the embedded number-words pairs and the user's own TSV files."""

from keras_xformer.datasets import number_words
from keras_xformer.datasets import parallel_text

__all__ = ["number_words", "parallel_text"]
