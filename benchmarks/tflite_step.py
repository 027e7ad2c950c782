"""Where a TFLite decoding step spends its time: one decoder step (the body
of `export_tflite`'s loop, without the loop) converted on its own, timed
with TFLite's default delegate (XNNPACK), whole and with parts taken out.

    python benchmarks/tflite_step.py [--batch 8] [--cache 64] [--float]

Parts taken out: `update` (the caches are not written: no
DYNAMIC_UPDATE_SLICE), `attention` (the two batched matmuls, the mask and
the softmax of every attention replaced by its query), `mask` (no attention
mask: the softmax over every key), `softmax` (no mask and no softmax: the
logits weigh the values directly), so "without softmax" against "without
attention" is the cost of the two batched matmuls alone. Same sizes as
benchmarks/generate.py (width 256, 8 heads, 4 decoder layers, vocabulary
8000, source 64); random weights; median of 100 invocations.
"""

import argparse
import os
import statistics
import sys
import time

import _common  # noqa: F401  (backend, log level, this checkout first)

parser = argparse.ArgumentParser()
parser.add_argument("--batch", type=int, default=8)
parser.add_argument("--cache", type=int, default=64, help="self-attention cache slots")
parser.add_argument("--float", action="store_true", help="float32 weights (default: dynamic int8)")
parser.add_argument("--threads", type=int, default=1)
ARGS = parser.parse_args()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from keras import ops  # noqa: E402

import keras_xformer.layers.attention as attention_module  # noqa: E402
from keras_xformer.decoding.search import _argmax  # noqa: E402
from keras_xformer.decoding.search import _empty_self_attention_caches  # noqa: E402
from keras_xformer.models import Transformer  # noqa: E402

VOCAB, WIDTH, HEADS, FF, LAYERS, SOURCE = 8000, 256, 8, 1024, 4, 64


class _NoUpdate:
    """`keras.ops` whose `slice_update` returns its input unchanged."""

    def __getattr__(self, name):
        return getattr(ops, name)

    def slice_update(self, inputs, start, updates):
        return inputs


def step_file(model, without):
    variables = list(model.variables)
    weights = [v.numpy() for v in variables]
    batch = ARGS.batch
    source = np.random.default_rng(0).integers(4, VOCAB, (batch, SOURCE)).astype("int32")
    encoded, source_mask = model.encode(source, training=False)
    cross = model.decoder.compute_cross_attention_caches(encoded, layout="split")
    own = _empty_self_attention_caches(model, batch, ARGS.cache)
    flat = [t for c in own + cross for t in c]
    specs = [tf.TensorSpec([batch, 1], tf.int32), tf.TensorSpec([], tf.int32),
             tf.TensorSpec(source_mask.shape, source_mask.dtype)]
    specs += [tf.TensorSpec(t.shape, t.dtype) for t in flat]
    saved = (attention_module.ops, attention_module._heads_first_attention,
             attention_module._attention_weights)
    weigh = attention_module._attention_weights
    if "mask" in without:
        attention_module._attention_weights = (
            lambda logits, mask, dtype, dropout, training: weigh(logits, None, dtype, dropout,
                                                                 training))
    if "softmax" in without:
        attention_module._attention_weights = (
            lambda logits, mask, dtype, dropout, training: (logits, logits))
    if "update" in without:
        attention_module.ops = _NoUpdate()
    if "attention" in without:
        attention_module._heads_first_attention = (
            lambda query, key, value, mask=None, dropout=None, training=None: (query, None))
    try:
        @tf.function(input_signature=specs)
        def step(tokens, index, mask, *tensors):
            values = [tf.constant(w) for w in weights]
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                pairs = [tuple(tensors[2 * j: 2 * j + 2]) for j in range(2 * LAYERS)]
                logits, caches = model.decode_step(tokens, index, pairs[:LAYERS],
                                                   pairs[LAYERS:], mask)
                return [_argmax(logits)] + [t for c in caches for t in c]

        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [step.get_concrete_function()], model)
        if not ARGS.float:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()
    finally:
        (attention_module.ops, attention_module._heads_first_attention,
         attention_module._attention_weights) = saved


def main():
    keras.utils.set_random_seed(0)
    model = Transformer(VOCAB, VOCAB, num_layers=LAYERS, hidden_dim=WIDTH, num_heads=HEADS,
                        intermediate_dim=FF, dropout=0.0, tie_output_embeddings=False)
    model.build()
    print(f"batch {ARGS.batch}, cache {ARGS.cache} slots, "
          f"{'float32' if ARGS.float else 'dynamic int8'}, threads {ARGS.threads}")
    interpreters = {}
    for without in ((), ("update",), ("mask",), ("softmax",), ("attention",),
                    ("update", "attention")):
        interpreter = Interpreter(model_content=step_file(model, without),
                                  num_threads=ARGS.threads)
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
        interpreter.invoke()
        interpreters["whole" if not without else "without " + " and ".join(without)] = interpreter
    times = {name: [] for name in interpreters}
    for _ in range(100):  # in turns
        for name, interpreter in interpreters.items():
            start = time.perf_counter()
            interpreter.invoke()
            times[name].append(1e3 * (time.perf_counter() - start))
    for name, values in times.items():
        print(f"  {name:<32} {statistics.median(values):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
