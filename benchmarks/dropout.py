"""Why our dropout hashes its masks under XLA: one dropout of a (64, 64, 256)
activation (1M elements, a training step's size) in a `tf.function`, with and
without XLA, Keras' against ours, in the same run.

    python benchmarks/dropout.py

The `--child` run repeats Keras' XLA case with
`XLA_FLAGS=--xla_cpu_use_fusion_emitters=false`, the XLA:CPU flag that
avoids the slow random-number code (flags are read once per process).
"""

import os
import subprocess
import sys

import _common
import keras
import numpy as np
import tensorflow as tf

from keras_xformer.layers._dropout import Dropout


def measure(cases):
    x = tf.constant(np.random.default_rng(0).standard_normal((64, 64, 256)), "float32")
    results = {}
    for name, layer, jit in cases:
        step = tf.function(lambda x, layer=layer: layer(x, training=True), jit_compile=jit)
        results[name] = 1000 * _common.time_call(lambda: step(x).numpy(), warmup=2, repeats=9)
    return results


def main():
    if "--child" in sys.argv:
        ms = measure([("keras XLA, fusion emitters off", keras.layers.Dropout(0.1, seed=1), True)])
        print("RESULT", ms["keras XLA, fusion emitters off"])
        return
    results = measure([
        ("keras, TensorFlow kernels", keras.layers.Dropout(0.1, seed=1), False),
        ("ours, TensorFlow kernels (= keras)", Dropout(0.1, seed=1), False),
        ("keras, XLA", keras.layers.Dropout(0.1, seed=1), True),
        ("ours, XLA (hashed masks)", Dropout(0.1, seed=1), True),
    ])
    out = subprocess.run(
        [sys.executable, __file__, "--child"], capture_output=True, text=True,
        env={**os.environ, "XLA_FLAGS": "--xla_cpu_use_fusion_emitters=false"})
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT")]
    if line:
        results["keras, XLA with --xla_cpu_use_fusion_emitters=false"] = float(line[0].split()[1])
    _common.print_table("Dropout of 1M elements (rate 0.1), ms", ["case", "ms"],
                        [[k, f"{v:.2f}"] for k, v in results.items()])
    _common.save_results("dropout", {"ms": results})


if __name__ == "__main__":
    main()
