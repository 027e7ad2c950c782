"""Metrics for padded sequence outputs."""

import keras
from keras import ops

_register = keras.saving.register_keras_serializable(package="keras_xformer")


@_register
class MaskedAccuracy(keras.metrics.Metric):
    """Token accuracy over non-padding positions (`fit` logs
    `masked_accuracy`).

    Args:
        ignore_class: the padding id whose positions do not count.
        name, dtype: as for `keras.metrics.Metric`.

    Example:

    >>> metric = MaskedAccuracy()
    >>> metric.update_state([[1, 2, 0]], [[[0, 1, 0], [0, 0, 1], [1, 0, 0]]])
    >>> float(metric.result())
    1.0
    """

    def __init__(self, ignore_class=0, name="masked_accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.ignore_class = ignore_class
        self.correct = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="correct")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        weight = ops.cast(ops.not_equal(y_true, self.ignore_class), "float32")
        if sample_weight is not None:
            sample_weight = ops.cast(sample_weight, "float32")
            while len(sample_weight.shape) < len(weight.shape):
                sample_weight = ops.expand_dims(sample_weight, -1)
            weight = weight * sample_weight
        hits = ops.cast(ops.equal(predicted, y_true), "float32") * weight
        self.correct.assign_add(ops.sum(hits))
        self.count.assign_add(ops.sum(weight))

    def result(self):
        return ops.divide_no_nan(self.correct, self.count)

    def reset_state(self):
        self.correct.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        config = super().get_config()
        config["ignore_class"] = self.ignore_class
        return config
