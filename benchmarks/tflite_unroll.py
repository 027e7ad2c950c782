"""TFLite decoding files with 1, 2 or 4 decoding steps per loop iteration
(`beam_search` / `greedy_search`'s `unroll`): ms per step and the
process's peak memory, on generate.py's model (benchmarks/RESULTS.md,
session 18). `export_tflite` unrolls beam search 4 times where its
self-attention caches take at least a quarter of the decoder's weights
(`tflite._beam_unroll`; generate.py's model: from batch 4 on); this
measures that choice.

    flock /tmp/kx_cpu.lock python benchmarks/tflite_unroll.py [--threads 2]
        [--method beam] [--batches 2 4 8] [--unrolls 1 2 4]
        [--quantizations dynamic_int8 none]

Why it helps: a TFLite `WHILE` loop copies every loop variable its body
changed back into the body's inputs after each iteration, and an op never
writes in place into a loop input, so each step's cache write
(DYNAMIC_UPDATE_SLICE) first copies the whole cache. In an unrolled body,
beam search's reordering GATHER makes an intermediate tensor that the next
step's write then updates in place, and the loop copies back once per
iteration. The cost: each unrolled step is its own set of operators, and
XNNPACK packs weights per operator, so the interpreter holds a copy of the
packed weights per step (the memory column).

Per (quantization, batch): the files are exported first, then timed in
turns (median of `--repeats` rounds of about a second each), their ids
checked equal, and each file's peak resident memory measured in a fresh
process (load, one call).
"""

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time

import _common  # noqa: F401  (sets the backend and log level, this checkout first)

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--method", choices=("beam", "greedy"), default="beam")
parser.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8])
parser.add_argument("--unrolls", type=int, nargs="+", default=[1, 2, 4])
parser.add_argument("--quantizations", nargs="+", default=["dynamic_int8"],
                    help='"dynamic_int8", "float16" or "none"')
parser.add_argument("--repeats", type=int, default=7)
parser.add_argument("--peak-memory-of", help=argparse.SUPPRESS)
ARGS = parser.parse_args()

VOCAB, WIDTH, HEADS, FF, LAYERS, SOURCE, NEW, BEAM = 8000, 256, 8, 1024, 4, 64, 64, 4


def source_for(runner):
    import numpy as np

    batch = runner.get_input_details()["source_ids"]["shape"][0]
    source = np.random.default_rng(batch).integers(4, VOCAB, (batch, SOURCE)).astype("int32")
    source[:, -1] = 3
    return source


def peak_memory(path):
    """Peak resident MiB of a fresh process that loads `path` and runs it
    once (VmHWM: getrusage's maximum would include the parent's, inherited
    through fork and exec)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path, num_threads=ARGS.threads).get_signature_runner()
    runner(source_ids=source_for(runner))
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def export(path, model, quantization, batch, unroll):
    from keras_xformer.decoding import search
    from keras_xformer.export import export_tflite
    from keras_xformer.export import tflite

    saved = tflite._beam_unroll, tflite.greedy_search
    if ARGS.method == "beam":
        tflite._beam_unroll = lambda *_: unroll
    else:
        tflite.greedy_search = functools.partial(search.greedy_search, unroll=unroll)
    try:
        export_tflite(path, model, SOURCE, NEW,
                      quantization=None if quantization == "none" else quantization,
                      batch_size=batch, method=ARGS.method, beam_size=BEAM)
    finally:
        tflite._beam_unroll, tflite.greedy_search = saved


def main():
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    model = _common.decoding_model(VOCAB, WIDTH, HEADS, FF, LAYERS)
    directory = tempfile.mkdtemp(prefix="kx_unroll_")
    print(f"{ARGS.method}, threads {ARGS.threads}: ms per step (median of {ARGS.repeats} "
          f"rounds in turns, min-max), peak resident MiB of a process running the file")
    for quantization in ARGS.quantizations:
        for batch in ARGS.batches:
            paths = {}
            for unroll in ARGS.unrolls:
                paths[unroll] = os.path.join(directory, f"{quantization}_{batch}_{unroll}.tflite")
                export(paths[unroll], model, quantization, batch, unroll)
            runners = {u: Interpreter(model_path=p, num_threads=ARGS.threads).get_signature_runner()
                       for u, p in paths.items()}
            source = source_for(runners[ARGS.unrolls[0]])
            ids = {u: r(source_ids=source)["target_ids"] for u, r in runners.items()}
            first = ids[ARGS.unrolls[0]]
            equal = all(np.array_equal(first, i) for i in ids.values())
            times = {u: [] for u in runners}
            for _ in range(ARGS.repeats):
                for u, runner in runners.items():
                    calls, start = 0, time.perf_counter()
                    while time.perf_counter() - start < 1.0:
                        runner(source_ids=source)
                        calls += 1
                    times[u].append(1e3 * (time.perf_counter() - start) / calls / NEW)
            del runners
            rows = batch * (BEAM if ARGS.method == "beam" else 1)
            base = statistics.median(times[ARGS.unrolls[0]])
            for u in ARGS.unrolls:
                memory = subprocess.run(
                    [sys.executable, __file__, "--threads", str(ARGS.threads),
                     "--peak-memory-of", paths[u]],
                    capture_output=True, text=True, check=True).stdout.split()[-1]
                median = statistics.median(times[u])
                print(f"{quantization:12s} batch {batch} ({rows:2d} rows) unroll {u}: "
                      f"{median:.3f} ms ({min(times[u]):.2f}-{max(times[u]):.2f}), "
                      f"{median / base:.2f}x of unroll {ARGS.unrolls[0]}, "
                      f"{float(memory):.0f} MiB; ids equal: {equal}", flush=True)


if __name__ == "__main__":
    if ARGS.peak_memory_of:
        print(f"{peak_memory(ARGS.peak_memory_of):.1f}")
    else:
        main()
