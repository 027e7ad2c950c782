"""The sequence-to-sequence Transformer."""

from keras_xformer.models.transformer import PRESETS
from keras_xformer.models.transformer import Transformer

__all__ = ["PRESETS", "Transformer"]
