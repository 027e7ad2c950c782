"""How a TFLite float32 FULLY_CONNECTED's time grows with its rows, and a
greedy decoding file's time with its batch: the reason greedy batch 8
float sits at about 2x keras-hub and not lower (benchmarks/RESULTS.md,
session 17).

XNNPACK's float32 matmul on this CPU (AVX-512) runs rows in tiles of 7
(`xnn_f32_gemm_minmax_ukernel_7x32__avx512f_broadcast` under `perf`), and
a tile with fewer rows costs as much as a full one: 8 rows cost about what
14 do. A greedy step at batch 8 multiplies 8 rows by every decoder and
output weight, so it pays for two tiles where 7 rows pay for one.

    flock /tmp/kx_cpu.lock python benchmarks/fc_rows.py [--threads 2]
        [--rows 1 4 7 8 14 15] [--files]

Part 1: one FULLY_CONNECTED per weight matrix, `--copies` different
matrices per call (so no matrix stays in a core's 1 MB L2 cache from one
call to the next; all of them fit this CPU's 32 MB L3), inputs of 256 -> 768, 1024 and 8000 features (the decoder's fused
Q/K/V, feed-forward and output projection at generate.py's sizes); us per
matmul, median of rounds in turns; "8 as 7+1" runs 8 rows as a 7-row and
a 1-row matmul of the same weights (XNNPACK takes one row with its 1x32
kernel). Part 2 (`--files`): greedy TFLite files of generate.py's model
(random weights, 64 new tokens) at batch 7 and 8, and the batch-8 file
with every 8-row FULLY_CONNECTED rewritten that way (two SLICEs, two
FULLY_CONNECTEDs, a CONCATENATION), ms per step and per row, in turns,
ids checked equal. Session 17 did not keep the rewrite: alone, 7+1 beat 8
rows, but in the whole file the 1-row matmuls cost far more than they do
here (the 1x32 kernel at 22% of a step's `perf` samples) and the step got
slower.
"""

import argparse
import os
import statistics
import tempfile
import time

import _common  # noqa: F401  (sets the backend and log level, this checkout first)

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 7, 8, 14, 15])
parser.add_argument("--outputs", type=int, nargs="+", default=[768, 1024, 8000])
parser.add_argument("--copies", type=int, default=8,
                    help="different weight matrices per call (8000 outputs: 2)")
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--files", action="store_true",
                    help="also time greedy TFLite files at batch 7 and 8")
ARGS = parser.parse_args()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

WIDTH = 256


def matmul_file(rows, outputs, copies, rng, split=False):
    """A TFLite file: `copies` matmuls of the (rows, 256) input, one weight
    matrix each, one column of each kept (the output stays small); with
    `split`, each as a matmul of all rows but the last and one of the last."""
    weights = [tf.constant(rng.standard_normal((outputs, WIDTH)).astype("float32") * 0.05)
               for _ in range(copies)]

    def matmul(x, w):
        if not split:
            return tf.matmul(x, w, transpose_b=True)
        head, last = tf.split(x, [rows - 1, 1], axis=0)
        return tf.concat([tf.matmul(head, w, transpose_b=True),
                          tf.matmul(last, w, transpose_b=True)], 0)

    def fn(x):
        return tf.add_n([matmul(x, w)[:, :1] for w in weights])

    concrete = tf.function(fn).get_concrete_function(tf.TensorSpec((rows, WIDTH), tf.float32))
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], fn).convert()


def in_turns(calls, repeats, seconds=0.3):
    """Median seconds per call of each callable, all taken once per round."""
    times = {name: [] for name in calls}
    for fn in calls.values():
        fn()
    for _ in range(repeats):
        for name, fn in calls.items():
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < seconds:
                fn()
                n += 1
            times[name].append((time.perf_counter() - start) / n)
    return {name: statistics.median(v) for name, v in times.items()}


def matmuls():
    rng = np.random.default_rng(0)
    calls, per_call = {}, {}
    for outputs in ARGS.outputs:
        copies = ARGS.copies if outputs < 4096 else 2
        for rows in ARGS.rows + ["8 as 7+1"]:
            split = rows == "8 as 7+1"
            count = 8 if split else rows
            interpreter = Interpreter(
                model_content=matmul_file(count, outputs, copies, rng, split=split),
                num_threads=ARGS.threads)
            interpreter.allocate_tensors()
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"],
                                   rng.standard_normal((count, WIDTH)).astype("float32"))
            calls[(outputs, rows)] = interpreter.invoke
            per_call[(outputs, rows)] = (copies, count)
    medians = in_turns(calls, ARGS.repeats)
    table = []
    for outputs in ARGS.outputs:
        seven = medians.get((outputs, 7))
        for rows in ARGS.rows + ["8 as 7+1"]:
            copies, count = per_call[(outputs, rows)]
            us = 1e6 * medians[(outputs, rows)] / copies
            ratio = f"{medians[(outputs, rows)] / seven:.2f}" if seven else "-"
            table.append((f"256 -> {outputs}", rows, f"{us:.1f}", f"{us / count:.1f}", ratio))
    _common.print_table(
        f"TFLite FULLY_CONNECTED, float32, {ARGS.threads} threads (us per matmul, median of "
        f"{ARGS.repeats} rounds in turns)",
        ("matmul", "rows", "us", "us per row", "time / time at 7 rows"), table)


def split_last_row(path, out_path, tile=7):
    """Rewrites `path`'s float32 FULLY_CONNECTEDs whose rows (the input's
    first dimension, every other leading one 1) leave one over a multiple
    of `tile` as two SLICEs, a matmul of all rows but the last, one of the
    last (the same weights and bias) and a CONCATENATION. Returns how many."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(path)

    def opcode(builtin):
        for index, code in enumerate(model.operatorCodes):
            if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
                return index
        code = schema.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
        model.operatorCodes.append(code)
        return len(model.operatorCodes) - 1

    def tensor(graph, shape, like=None, values=None):
        t = schema.TensorT()
        t.shape, t.buffer = list(shape), 0
        t.type = schema.TensorType.INT32 if like is None else like.type
        t.name = f"split_last_row_{len(graph.tensors)}"
        if values is not None:
            buffer = schema.BufferT()
            buffer.data = np.asarray(values, np.int32).tobytes()
            model.buffers.append(buffer)
            t.buffer = len(model.buffers) - 1
        graph.tensors.append(t)
        return len(graph.tensors) - 1

    def operator(code, inputs, outputs, options_type, options):
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = code, list(inputs), list(outputs)
        op.builtinOptionsType, op.builtinOptions = options_type, options
        return op

    fc = opcode(schema.BuiltinOperator.FULLY_CONNECTED)
    count = 0
    for graph in model.subgraphs:
        operators = []
        for op in graph.operators:
            x = graph.tensors[op.inputs[0]]
            shape = list(x.shape)
            rows = int(np.prod(shape[:-1]))
            if (op.opcodeIndex != fc or x.type != schema.TensorType.FLOAT32 or rows <= 1
                    or rows % tile != 1 or shape[0] != rows):
                operators.append(op)
                continue
            y = graph.tensors[op.outputs[0]]
            out_shape = list(y.shape)
            slice_code = opcode(schema.BuiltinOperator.SLICE)
            head = tensor(graph, [rows - 1] + shape[1:], x)
            last = tensor(graph, [1] + shape[1:], x)
            head_out = tensor(graph, [rows - 1] + out_shape[1:], y)
            last_out = tensor(graph, [1] + out_shape[1:], y)
            starts = (tensor(graph, [len(shape)], values=[0] * len(shape)),
                      tensor(graph, [len(shape)], values=[rows - 1] + [0] * (len(shape) - 1)))
            sizes = (tensor(graph, [len(shape)], values=[rows - 1] + shape[1:]),
                     tensor(graph, [len(shape)], values=[1] + shape[1:]))
            concat = schema.ConcatenationOptionsT()
            concat.axis = 0
            operators += [
                operator(slice_code, [op.inputs[0], starts[0], sizes[0]], [head],
                         schema.BuiltinOptions.SliceOptions, schema.SliceOptionsT()),
                operator(slice_code, [op.inputs[0], starts[1], sizes[1]], [last],
                         schema.BuiltinOptions.SliceOptions, schema.SliceOptionsT()),
                operator(fc, [head] + list(op.inputs[1:]), [head_out],
                         op.builtinOptionsType, op.builtinOptions),
                operator(fc, [last] + list(op.inputs[1:]), [last_out],
                         op.builtinOptionsType, op.builtinOptions),
                operator(opcode(schema.BuiltinOperator.CONCATENATION), [head_out, last_out],
                         op.outputs, schema.BuiltinOptions.ConcatenationOptions, concat),
            ]
            count += 1
        graph.operators = operators
    flatbuffer_utils.write_model(model, out_path)
    return count


def files():
    from keras_xformer.export import export_tflite

    model = _common.decoding_model()
    directory = tempfile.mkdtemp(prefix="kx_fc_rows_")
    runners, sources = {}, {}
    for batch in (7, 8):
        path = os.path.join(directory, f"greedy_{batch}.tflite")
        export_tflite(path, model, 64, 64, batch_size=batch, method="greedy")
        runners[batch] = Interpreter(model_path=path, num_threads=ARGS.threads).get_signature_runner()
        source = np.random.default_rng(8).integers(4, 8000, (8, 64)).astype("int32")[:batch]
        source[:, -1] = 3
        sources[batch] = source
    split = os.path.join(directory, "greedy_8_split.tflite")
    rewritten = split_last_row(os.path.join(directory, "greedy_8.tflite"), split)
    runners["8, 7+1"] = Interpreter(model_path=split, num_threads=ARGS.threads).get_signature_runner()
    sources["8, 7+1"] = sources[8]
    same = np.array_equal(runners[8](source_ids=sources[8])["target_ids"],
                          runners["8, 7+1"](source_ids=sources[8])["target_ids"])
    print(f"batch 8 file with {rewritten} FULLY_CONNECTEDs split 7+1: ids equal: {same}")
    medians = in_turns({b: (lambda b=b: runners[b](source_ids=sources[b])) for b in runners},
                       ARGS.repeats, seconds=1.5)
    table = [(batch, f"{1e3 * medians[batch] / 64:.3f}",
              f"{1e3 * medians[batch] / 64 / (8 if batch == '8, 7+1' else batch):.3f}")
             for batch in runners]
    _common.print_table(
        f"Greedy TFLite float32 files, generate.py's model, 64 new tokens, {ARGS.threads} threads "
        f"(median of {ARGS.repeats} rounds in turns)",
        ("batch", "ms per step", "ms per row-step"), table)


if __name__ == "__main__":
    matmuls()
    if ARGS.files:
        files()
