"""Position-wise feed-forward network (Vaswani et al. 2017, 3.3)."""

import keras

from keras_xformer.layers._checks import check_positive_int
from keras_xformer.layers._dropout import Dropout
from keras_xformer.layers._lora import LoraMixin
from keras_xformer.layers._quantization import dtype_policy_config

_register = keras.saving.register_keras_serializable(package="keras_xformer")


@_register
class PositionwiseFeedForward(LoraMixin, keras.layers.Layer):
    """`FFN(x) = max(0, x W_1 + b_1) W_2 + b_2`, applied at every position.

    Args:
        intermediate_dim: the inner width `d_ff`.
        activation: the inner activation (the paper's `"relu"`).
        dropout: dropout on the inner activations.
        kernel_initializer, bias_initializer: of both dense layers.
        **kwargs: other `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(batch, length, dim)`.
        training: whether dropout is active.

    Returns:
        `(batch, length, dim)`.
    """

    def __init__(
        self,
        intermediate_dim,
        activation="relu",
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("intermediate_dim", intermediate_dim)
        self.intermediate_dim = intermediate_dim
        self.activation = keras.activations.get(activation)
        self.dropout = dropout
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

    def build(self, input_shape):
        common = dict(
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            dtype=self.dtype_policy,
        )
        self.inner_dense = keras.layers.Dense(
            self.intermediate_dim, activation=self.activation, name="inner",
            **common,
        )
        self.inner_dense.build(input_shape)
        self.inner_dropout = Dropout(
            self.dropout, dtype=self.dtype_policy
        )
        self.output_dense = keras.layers.Dense(
            input_shape[-1], name="output", **common
        )
        self.output_dense.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))

    def call(self, inputs, training=None):
        x = self.inner_dense(inputs)
        x = self.inner_dropout(x, training=training)
        return self.output_dense(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "activation": keras.activations.serialize(self.activation),
                "dropout": self.dropout,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
            }
        )
        config["dtype"] = dtype_policy_config(self)
        return config
