"""Where a decoding step's time goes: our XLA `generate` (greedy, beam 4) per
step beside the output projection alone ((rows, 256) x (256, 8000) in the
same XLA while-loop shape), at batch 1 and 8, the sizes of
benchmarks/generate.py. Thread count and XLA flags are process-wide, so
compare them by running this script once per setting, back to back:

    KX_THREADS=1 python benchmarks/generate_profile.py greedy beam
    KX_THREADS=2 XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/generate_profile.py greedy beam
"""

import os
import statistics
import sys
import time

import _common  # noqa: F401  (backend, log level)
import tensorflow as tf

THREADS = int(os.environ.get("KX_THREADS", "0"))
if THREADS:
    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(1)

import numpy as np  # noqa: E402


VOCAB, WIDTH, HEADS, FF, LAYERS, SOURCE, NEW = 8000, 256, 8, 1024, 4, 64, 64


def per_step(fn, repeats=7):
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times) / NEW


def main():
    model = _common.decoding_model(VOCAB, WIDTH, HEADS, FF, LAYERS)
    kernel = tf.constant(model.output_projection.kernel.numpy())
    methods = sys.argv[1:] or ["greedy"]

    @tf.function(jit_compile=True)
    def projection_loop(x):
        def body(i, x, total):
            logits = tf.matmul(x + tf.cast(i, tf.float32), kernel)
            return i + 1, x, total + tf.reduce_max(logits, -1)

        return tf.while_loop(lambda i, x, t: i < NEW, body,
                             (0, x, tf.zeros(tf.shape(x)[:1])))[2]

    for batch in (1, 8):
        source = np.random.default_rng(batch).integers(4, VOCAB, (batch, SOURCE)).astype("int32")
        result = {}
        for method in methods:
            result[method] = per_step(lambda: model.generate(
                source, max_length=NEW, method=method, jit_compile=True))
        rows = batch * (4 if "beam" in methods else 1)
        x = tf.random.normal((rows, WIDTH))
        result[f"projection only ({rows} rows)"] = per_step(lambda: projection_loop(x).numpy())
        print(os.environ.get("XLA_FLAGS", "-"), "threads", THREADS or "default", "batch",
              batch, {k: round(v, 3) for k, v in result.items()}, flush=True)


if __name__ == "__main__":
    main()
