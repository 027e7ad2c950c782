"""Dropout whose random bits stay cheap under XLA on CPU.

`keras.layers.Dropout` draws its mask with TensorFlow's Philox generator.
Compiled by XLA:CPU (TensorFlow 2.21, its default fusion emitters) with a
seed known only at run time, as in training, that generator ran about 70x
slower than TensorFlow's own kernel: one dropout of 1M elements took 469 ms
instead of 6.7 ms (benchmarks/dropout.py), and shipping this dropout made an
XLA training step of a 4+4-layer Transformer 1.11x faster
(benchmarks/train.py, lever `keras_dropout`). Inside an
XLA-compiled TensorFlow function, and inside `jax.jit` on JAX, the bits here
come from a counter-based integer hash (Wellons' "lowbias32") of each
element's index and a per-call seed: a few integer multiplies and shifts
that XLA fuses into the consumer. JAX's own generator (threefry, what
`keras.random.dropout` uses there) cost 13.7 ms against 0.30 ms for the
hash for the same 1M-element dropout under `jax.jit`
(benchmarks/backends.py, `dropout`). Everywhere
else (TensorFlow's kernels, where that hash costs more than Philox; JAX
eager; PyTorch) this is exactly `keras.layers.Dropout`.

For dropout's purposes the hashed masks are independent Bernoulli(1 - rate)
draws (bit frequencies, the dropped fraction and independence across calls
and neighbours are tested); they are not cryptographic, and they differ
from Keras' masks for the same seed.
"""

import keras
import numpy as np
from keras import ops

_GOLDEN = np.uint32(0x9E3779B9)


def _mix(x):
    """A bijective avalanche hash of uint32 values (lowbias32)."""
    x = ops.bitwise_xor(x, ops.right_shift(x, np.uint32(16)))
    x = ops.multiply(x, np.uint32(0x7FEB352D))
    x = ops.bitwise_xor(x, ops.right_shift(x, np.uint32(15)))
    x = ops.multiply(x, np.uint32(0x846CA68B))
    return ops.bitwise_xor(x, ops.right_shift(x, np.uint32(16)))


def _compiled_by_xla(inputs):
    """Whether this call is being traced into an XLA-compiled function:
    `jit_compile=True` on TensorFlow, any `jax.jit` trace on JAX."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return isinstance(inputs, jax.core.Tracer)
    if backend != "tensorflow":
        return False
    # TensorFlow has no public API for it.
    try:
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # moved in a later TensorFlow: use Keras' dropout
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())


def random_bits(shape, seed):
    """uint32 random bits of `shape` from a `(2,)` integer seed."""
    seed = ops.cast(seed, "uint32")
    offset = _mix(ops.bitwise_xor(seed[0], _mix(ops.add(seed[1], _GOLDEN))))
    size = 1
    for dim in shape:
        size = size * dim
    index = ops.cast(ops.arange(size, dtype="int32"), "uint32")
    return ops.reshape(_mix(ops.add(ops.multiply(index, _GOLDEN), offset)), shape)


@keras.saving.register_keras_serializable(package="keras_xformer")
class Dropout(keras.layers.Dropout):
    """`keras.layers.Dropout` (same arguments, weights and semantics) whose
    masks come from `random_bits` inside XLA-compiled functions
    (TensorFlow with `jit_compile=True`, JAX under `jax.jit`)."""

    def call(self, inputs, training=False):
        if (
            not training
            or self.rate <= 0
            or self.noise_shape is not None
            or not _compiled_by_xla(inputs)
        ):
            return super().call(inputs, training=training)
        threshold = np.uint32(min(round(self.rate * 2.0**32), 2**32 - 1))
        keep = ops.greater_equal(
            random_bits(ops.shape(inputs), self.seed_generator.next()), threshold
        )
        scale = ops.cast(1.0 / (1.0 - self.rate), inputs.dtype)
        return ops.where(keep, inputs * scale, ops.zeros_like(inputs))
