"""Export a trained translator for TF Serving (SavedModel) and phones (TFLite)."""

from keras_xformer.export.saved_model import export_saved_model
from keras_xformer.export.tflite import export_tflite

__all__ = ["export_saved_model", "export_tflite"]
