"""The learning-rate schedule of Vaswani et al. (2017), section 5.3."""

import keras
from keras import ops

_register = keras.saving.register_keras_serializable(package="keras_xformer")


@_register
class TransformerSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`lrate = d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)`.

    Linear warm-up for `warmup_steps`, then decay with the inverse square
    root of the step. Evaluated at `max(step, 1)`, so Keras' first update
    (iteration 0) does not get a zero rate.

    Args:
        hidden_dim: the model width `d_model`.
        warmup_steps: the paper's 4000.
        scale: a multiplier on the whole schedule (1.0 is the paper's).

    Example:

    >>> schedule = TransformerSchedule(512)
    >>> round(float(schedule(4000)), 6)
    0.000699
    """

    def __init__(self, hidden_dim, warmup_steps=4000, scale=1.0):
        if hidden_dim <= 0 or warmup_steps <= 0:
            raise ValueError(
                "`hidden_dim` and `warmup_steps` must be positive. Received: "
                f"hidden_dim={hidden_dim}, warmup_steps={warmup_steps}"
            )
        self.hidden_dim = hidden_dim
        self.warmup_steps = warmup_steps
        self.scale = scale

    def __call__(self, step):
        step = ops.maximum(ops.cast(step, "float32"), 1.0)
        warmup = ops.cast(self.warmup_steps, "float32")
        return (
            self.scale
            * ops.cast(self.hidden_dim, "float32") ** -0.5
            * ops.minimum(ops.rsqrt(step), step * warmup**-1.5)
        )

    def get_config(self):
        return {
            "hidden_dim": self.hidden_dim,
            "warmup_steps": self.warmup_steps,
            "scale": self.scale,
        }
