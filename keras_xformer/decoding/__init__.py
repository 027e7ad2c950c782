"""Greedy and beam search with key/value caches."""

from keras_xformer.decoding.search import beam_search
from keras_xformer.decoding.search import generate
from keras_xformer.decoding.search import greedy_search

__all__ = ["beam_search", "generate", "greedy_search"]
