"""A beam's k best tokens: one TopK over the whole vocabulary row against
`keras_xformer.decoding.search._top_k` (block maxima, the k best blocks,
a TopK over their values), both under XLA (TensorFlow, `jit_compile=True`)
and in a TFLite file (XNNPACK), taken in turns; checks that both give the
same values and ids, ties included.

    flock /tmp/kx_cpu.lock python benchmarks/top_k.py [--rows 32] [--vocabulary 8000] [--k 4]

Rows 32 = beam 4 at batch 8, generate.py's setting. Session 16 found
TopK_V2 at 5.5% of a dynamic-int8 beam b8 TFLite step under `perf`
(benchmarks/tflite_profile.py); benchmarks/RESULTS.md has the figures.
"""

import argparse
import statistics
import time

import _common  # noqa: F401  (sets the backend and log level, this checkout first)

parser = argparse.ArgumentParser()
parser.add_argument("--rows", type=int, default=32)
parser.add_argument("--vocabulary", type=int, default=8000)
parser.add_argument("--k", type=int, default=4)
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--repeats", type=int, default=5)
ARGS = parser.parse_args()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(ARGS.threads)
tf.config.threading.set_inter_op_parallelism_threads(1)

from keras import ops  # noqa: E402

from keras_xformer.decoding import search  # noqa: E402

CALLS = 200  # per timing, inside one compiled loop (XLA) or a Python loop (TFLite)


def one_top_k(x):
    return tf.math.top_k(x, ARGS.k)


def in_blocks(x):
    values, ids = search._top_k(x, ARGS.k)
    return values, ops.cast(ids, "int32")


def xla_loop(fn):
    """CALLS top_k's in one XLA while loop: the call overhead amortized."""
    @tf.function(jit_compile=True)
    def run(x):
        def body(i, total):
            values, ids = fn(x + tf.cast(i, x.dtype) * 1e-9)
            return i + 1, total + tf.reduce_sum(values) + tf.cast(tf.reduce_sum(ids), x.dtype)
        return tf.while_loop(lambda i, _: i < CALLS, body, (0, tf.constant(0.0)))[1]
    return run


def tflite_runner(fn):
    from ai_edge_litert.interpreter import Interpreter

    spec = tf.TensorSpec((ARGS.rows, ARGS.vocabulary), tf.float32)
    concrete = tf.function(fn, input_signature=[spec]).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    interpreter = Interpreter(model_content=converter.convert(), num_threads=ARGS.threads)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    outputs = sorted(interpreter.get_output_details(), key=lambda d: d["name"])

    def run(x):
        interpreter.set_tensor(source, x)
        interpreter.invoke()
        return [interpreter.get_tensor(d["index"]) for d in outputs]

    def timed(x):
        for _ in range(CALLS):
            run(x)

    return run, timed


def main():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ARGS.rows, ARGS.vocabulary)).astype("float32")
    ties = np.round(x, 1)  # many exact ties
    candidates = {}
    for name, fn in (("one TopK", one_top_k), ("_top_k in blocks", in_blocks)):
        # Same values and ids, eagerly and in TFLite, ties included.
        run, timed = tflite_runner(fn)
        for data in (x, ties):
            expected = [t.numpy() for t in one_top_k(data)]
            got_eager = [ops.convert_to_numpy(t) for t in fn(tf.constant(data))]
            got_tflite = sorted(run(data), key=lambda a: a.dtype.kind)  # float, then int
            for got in (got_eager, [got_tflite[0], got_tflite[1]]):
                np.testing.assert_array_equal(got[0], expected[0])
                np.testing.assert_array_equal(got[1], expected[1])
        loop = xla_loop(fn)
        loop(tf.constant(x))  # compile
        candidates[f"XLA: {name}"] = lambda loop=loop: loop(tf.constant(x)).numpy()
        candidates[f"TFLite: {name}"] = lambda timed=timed: timed(x)
    times = {name: [] for name in candidates}
    for _ in range(ARGS.repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(1e6 * (time.perf_counter() - start) / CALLS)
    print(f"top_k of ({ARGS.rows}, {ARGS.vocabulary}), k = {ARGS.k}, {ARGS.threads} thread(s): "
          f"us per call, median of {ARGS.repeats} rounds in turns (min-max); values and "
          "ids equal one TopK's, ties included")
    for name, values in times.items():
        print(f"  {name:28s} {statistics.median(values):8.1f}  "
              f"({min(values):.1f}-{max(values):.1f})")
    for runtime in ("XLA", "TFLite"):
        ratio = (statistics.median(times[f"{runtime}: one TopK"])
                 / statistics.median(times[f"{runtime}: _top_k in blocks"]))
        print(f"  {runtime}: blocks {ratio:.1f}x faster")


if __name__ == "__main__":
    main()
