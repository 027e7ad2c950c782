"""Forward + backward time of attention and encoder blocks, ours against
`keras.layers.MultiHeadAttention` and `keras_hub.layers.TransformerEncoder`,
same sizes, same run, with and without XLA.

    python benchmarks/attention.py [--batch 32 --length 128 --width 256]
"""

import argparse

import _common  # noqa: F401  (sets the backend before keras is imported)
import keras
import keras_hub
import numpy as np
import tensorflow as tf

from keras_xformer.layers import MultiHeadAttention
from keras_xformer.layers import TransformerEncoderBlock
from keras_xformer.layers import scaled_dot_product_attention


def step_fn(layer, x, mask, jit_compile):
    """One forward + backward pass (loss = mean of squares)."""

    @tf.function(jit_compile=jit_compile)
    def step(x, mask):
        with tf.GradientTape() as tape:
            y = layer(x, mask)
            loss = tf.reduce_mean(tf.square(tf.cast(y, "float32")))
        return tape.gradient(loss, layer.trainable_variables)

    return lambda: [g.numpy() for g in step(x, mask)][:0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    b, t, d, h = args.batch, args.length, args.width, args.heads
    keras.utils.set_random_seed(0)
    x = tf.constant(np.random.default_rng(0).standard_normal((b, t, d)), "float32")
    lengths = np.random.default_rng(1).integers(t // 2, t + 1, b)
    mask = tf.constant(np.arange(t)[None, :] < lengths[:, None])

    def mha(cls):
        layer = cls(num_heads=h, key_dim=d // h)
        layer(x, x)
        return lambda x, m: layer(x, x, query_mask=m, value_mask=m), layer

    def encoder_ours():
        layer = TransformerEncoderBlock(h, 4 * d, dropout=0.0)
        layer(x)
        return lambda x, m: layer(x, padding_mask=m), layer

    def encoder_hub():
        layer = keras_hub.layers.TransformerEncoder(4 * d, h, dropout=0.0)
        layer(x)
        return lambda x, m: layer(x, padding_mask=m), layer

    cases = {
        "MultiHeadAttention": {
            "ours": lambda: mha(MultiHeadAttention),
            "keras": lambda: mha(keras.layers.MultiHeadAttention),
        },
        "EncoderBlock": {
            "ours": encoder_ours,
            "keras_hub": encoder_hub,
        },
    }
    rows, results = [], {}
    for case, impls in cases.items():
        for jit in (False, True):
            timings = {}
            for name, make in impls.items():
                call, layer = make()

                class Wrapped:
                    trainable_variables = layer.trainable_variables

                    def __call__(self, x, m):
                        return call(x, m)

                params = sum(int(np.prod(v.shape)) for v in layer.trainable_variables)
                seconds = _common.time_call(
                    step_fn(Wrapped(), x, mask, jit), repeats=args.repeats
                )
                timings[name] = (seconds, params)
            (ours_s, ours_p), (other_name, (other_s, other_p)) = (
                timings["ours"], [(k, v) for k, v in timings.items() if k != "ours"][0]
            )
            assert ours_p == other_p, (case, ours_p, other_p)
            ratio = other_s / ours_s
            rows.append((case, f"jit={jit}", f"{ours_s * 1e3:.1f}",
                         f"{other_s * 1e3:.1f} ({other_name})", f"{ratio:.2f}x",
                         ours_p))
            results[f"{case}/jit={jit}"] = {
                "ours_ms": ours_s * 1e3, f"{other_name}_ms": other_s * 1e3,
                "speedup": ratio, "params": ours_p,
            }
    # The attention core alone: our einsum path against
    # `keras.ops.dot_product_attention` (what `MultiHeadAttention` runs on
    # GPU/TPU), on projected (batch, T, heads, dim) tensors, padding mask on.
    q, k, v = (tf.constant(np.random.default_rng(i).standard_normal((b, t, h, d // h)),
                           "float32") for i in (2, 3, 4))
    core_mask = mask[:, None, None, :]

    def core_step(fn, jit):
        @tf.function(jit_compile=jit)
        def step(q, k, v):
            with tf.GradientTape() as tape:
                tape.watch([q, k, v])
                loss = tf.reduce_mean(tf.square(fn(q, k, v)))
            return tape.gradient(loss, [q, k, v])

        return lambda: [g.numpy() for g in step(q, k, v)][:0]

    def ours_core(q, k, v):
        return scaled_dot_product_attention(q, k, v, mask[:, None, :])[0]

    def keras_core(q, k, v):
        return keras.ops.dot_product_attention(
            q, k, v, mask=core_mask, scale=1.0 / np.sqrt(d // h))

    for jit in (False, True):
        ours_s = _common.time_call(core_step(ours_core, jit), repeats=args.repeats)
        dpa_s = _common.time_call(core_step(keras_core, jit), repeats=args.repeats)
        ratio = dpa_s / ours_s
        rows.append(("AttentionCore", f"jit={jit}", f"{ours_s * 1e3:.1f}",
                     f"{dpa_s * 1e3:.1f} (ops.dot_product_attention)",
                     f"{ratio:.2f}x", 0))
        results[f"AttentionCore/jit={jit}"] = {
            "ours_ms": ours_s * 1e3, "dot_product_attention_ms": dpa_s * 1e3,
            "speedup": ratio,
        }
    _common.print_table(
        f"Forward+backward, batch {b}, length {t}, width {d}, {h} heads "
        "(padding mask on; speedup = theirs / ours)",
        ("case", "mode", "ours ms", "theirs ms", "speedup", "params"),
        rows,
    )
    _common.save_results("attention", {"config": vars(args), "results": results})


if __name__ == "__main__":
    main()
