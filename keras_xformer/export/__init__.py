"""Export a trained translator for TF Serving (SavedModel), phones (TFLite)
and the CTranslate2 engine."""

from keras_xformer.export.ctranslate2 import ctranslate2_score
from keras_xformer.export.ctranslate2 import ctranslate2_translate
from keras_xformer.export.ctranslate2 import export_ctranslate2
from keras_xformer.export.saved_model import export_saved_model
from keras_xformer.export.tflite import export_tflite

__all__ = [
    "ctranslate2_score",
    "ctranslate2_translate",
    "export_ctranslate2",
    "export_saved_model",
    "export_tflite",
]
