"""Shared timing helpers for the benchmarks (compare within one run only:
this CPU's speed drifts between runs)."""

import json
import os
import statistics
import sys
import time

# Measure the checkout this script lives in (a worktree, a branch), not
# whichever keras_xformer happens to be pip-installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")


def time_call(fn, warmup=2, repeats=7, min_seconds=0.0):
    """Median seconds of `fn()` after `warmup` calls (compiles, caches)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def print_table(title, header, rows):
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*header))
    for row in rows:
        print(line.format(*row))


def save_results(name, payload):
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    return path


def decoding_model(vocabulary=8000, width=256, heads=8, intermediate=1024, layers=4):
    """The decoding benchmarks' model (generate.py's sizes), random weights
    with seed 0 and [PAD]/[END] biased to -1e4 so every run makes all its
    tokens."""
    import keras

    from keras_xformer.models import Transformer

    keras.utils.set_random_seed(0)
    model = Transformer(vocabulary, vocabulary, num_layers=layers, hidden_dim=width,
                        num_heads=heads, intermediate_dim=intermediate, dropout=0.0,
                        tie_output_embeddings=False)
    model.build()
    bias = model.output_projection.bias.numpy()
    bias[[0, 3]] = -1e4
    model.output_projection.bias.assign(bias)
    return model
