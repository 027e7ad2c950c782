"""What the encoder and decoder blocks and stacks share: arguments, the
residual sublayer connection, configs."""

import keras
from keras.src.backend import compute_output_spec as _trace_output_spec

from keras_xformer.layers._checks import check_positive_int
from keras_xformer.layers._checks import check_rate
from keras_xformer.layers._dropout import Dropout
from keras_xformer.layers._lora import LoraMixin
from keras_xformer.layers._masking import keras_mask
from keras_xformer.layers._quantization import dtype_policy_config
from keras_xformer.layers.attention import MultiHeadAttention
from keras_xformer.layers.feed_forward import PositionwiseFeedForward


def check_width(width, num_heads):
    if width is None:
        raise ValueError("The model width (last input dimension) must be known.")
    if width % num_heads:
        raise ValueError(
            f"The model width {width} is not divisible by num_heads="
            f"{num_heads}. Choose num_heads dividing the last input "
            "dimension (e.g. 8 heads for a width of 512)."
        )
    return width // num_heads


class BlockBase(LoraMixin, keras.layers.Layer):
    """Arguments, sublayer factories and config shared by both blocks."""

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        dropout=0.1,
        activation="relu",
        norm_first=False,
        layer_norm_epsilon=1e-6,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_heads", num_heads)
        check_positive_int("intermediate_dim", intermediate_dim)
        check_rate("dropout", dropout)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.activation = keras.activations.get(activation)
        self.norm_first = norm_first
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

    def _attention(self, name, key_dim):
        return MultiHeadAttention(
            self.num_heads,
            key_dim,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            dtype=self.dtype_policy,
            name=name,
        )

    def _norm(self, name):
        return keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
        )

    def _feed_forward(self):
        return PositionwiseFeedForward(
            self.intermediate_dim,
            activation=self.activation,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            dtype=self.dtype_policy,
            name="feed_forward",
        )

    def _dropout(self):
        return Dropout(self.dropout, dtype=self.dtype_policy)

    def _residual(self, x, norm, dropout, sublayer, training):
        """`LayerNorm(x + Sublayer(x))` (post-LN, the paper's 5.4), or
        `x + Sublayer(LayerNorm(x))` with `norm_first`. `sublayer` returns
        its output and whatever else the caller needs (caches, scores)."""
        y, extra = sublayer(norm(x) if self.norm_first else x)
        y = x + dropout(y, training=training)
        return (y if self.norm_first else norm(y)), extra

    def compute_output_shape(self, inputs_shape, *args, **kwargs):
        return inputs_shape

    def compute_output_spec(self, inputs, *args, **kwargs):
        extras = ("return_attention_scores", "self_attention_cache")
        if any(kwargs.get(k) not in (None, False) for k in extras):
            # Several outputs: trace `call` symbolically for their specs.
            return _trace_output_spec(self.call, inputs, *args, **kwargs)
        return keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "activation": keras.activations.serialize(self.activation),
                "norm_first": self.norm_first,
                "layer_norm_epsilon": self.layer_norm_epsilon,
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


class StackBase(LoraMixin, keras.layers.Layer):
    """`num_layers` blocks, plus a final LayerNorm when `norm_first`."""

    block_class = None

    def __init__(
        self,
        num_layers,
        num_heads,
        intermediate_dim,
        dropout=0.1,
        activation="relu",
        norm_first=False,
        layer_norm_epsilon=1e-6,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_layers", num_layers)
        self.num_layers = num_layers
        self.blocks = [
            self.block_class(
                num_heads,
                intermediate_dim,
                dropout=dropout,
                activation=activation,
                norm_first=norm_first,
                layer_norm_epsilon=layer_norm_epsilon,
                kernel_initializer=kernel_initializer,
                bias_initializer=bias_initializer,
                dtype=self.dtype_policy,
                name=f"block_{i}",
            )
            for i in range(num_layers)
        ]
        block = self.blocks[0]
        self.num_heads = block.num_heads
        self.intermediate_dim = block.intermediate_dim
        self.dropout = block.dropout
        self.activation = block.activation
        self.norm_first = block.norm_first
        self.layer_norm_epsilon = block.layer_norm_epsilon
        self.kernel_initializer = block.kernel_initializer
        self.bias_initializer = block.bias_initializer
        self.final_norm = None
        if norm_first:
            # Pre-LN leaves the residual stream unnormalized: normalize once
            # at the end (as in GPT-2 and tensor2tensor).
            self.final_norm = keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon, dtype=self.dtype_policy,
                name="final_norm",
            )
        self.supports_masking = True

    def _finish(self, x):
        return x if self.final_norm is None else self.final_norm(x)

    def compute_output_shape(self, inputs_shape, *args, **kwargs):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        block_config = self.blocks[0].get_config()
        for key in ("name", "trainable", "dtype"):
            block_config.pop(key, None)
        config.update(block_config)
        config["num_layers"] = self.num_layers
        config["dtype"] = dtype_policy_config(self)
        return config


def padding_mask_or_keras_mask(mask, tensor):
    """An explicit padding mask if given, else the tensor's Keras mask."""
    return keras_mask(tensor) if mask is None else mask
