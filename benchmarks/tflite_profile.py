"""Where a TFLite decoding file spends its time, by native function: exports
the file of benchmarks/generate.py's sizes (4+4 layers, width 256, 8 heads,
vocabulary 8000, source 64, 64 new tokens, random weights, [END]/[PAD]
biased away so every run makes 64 tokens), then, in a second process that
loads only the TFLite runtime, runs it in a loop under Linux `perf`:

    python benchmarks/tflite_profile.py export beam8.tflite --method beam --batch 8
    perf record -g -o beam8.perf python benchmarks/tflite_profile.py run beam8.tflite
    perf report -i beam8.perf --no-children --sort symbol --stdio -g none

(`run` prints its ms per step.) Session 15 found this way that the loop's
`[:, -1]` slice of the logits ran as TFLite's reference STRIDED_SLICE
kernel (15% of a dynamic-int8 beam b8 step), and that copies of the
self-attention caches are most of what remains; session 16, that TOPK_V2
over the vocabulary took 5.5% (now `search._top_k`) and that the
attention's SELECT_V2 split XNNPACK's graph at every attention (now a
MINIMUM) (benchmarks/RESULTS.md).
"""

import argparse
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("mode", choices=("export", "run"))
parser.add_argument("path")
parser.add_argument("--method", choices=("greedy", "beam"), default="beam")
parser.add_argument("--batch", type=int, default=8)
parser.add_argument("--quantization", default="dynamic_int8",
                    help='"dynamic_int8", "float16" or "none"')
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--seconds", type=float, default=15.0)
ARGS = parser.parse_args()

VOCAB, WIDTH, HEADS, FF, LAYERS, SOURCE, NEW = 8000, 256, 8, 1024, 4, 64, 64


def export():
    import _common  # (backend, log level, this checkout first)

    from keras_xformer.export import export_tflite

    model = _common.decoding_model(VOCAB, WIDTH, HEADS, FF, LAYERS)
    quantization = None if ARGS.quantization == "none" else ARGS.quantization
    size = export_tflite(ARGS.path, model, SOURCE, NEW, quantization=quantization,
                         batch_size=ARGS.batch, method=ARGS.method)
    print(f"wrote {ARGS.path}: {size / 2**20:.1f} MiB")


def run():
    # The TFLite runtime alone: no TensorFlow in this process's profile.
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=ARGS.path, num_threads=ARGS.threads).get_signature_runner()
    batch = runner.get_input_details()["source_ids"]["shape"][0]
    source = np.random.default_rng(batch).integers(4, VOCAB, (batch, SOURCE)).astype("int32")
    source[:, -1] = 3
    runner(source_ids=source)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < ARGS.seconds:
        runner(source_ids=source)
        calls += 1
    print(f"{ARGS.path}: {1e3 * (time.perf_counter() - start) / calls / NEW:.3f} ms per step "
          f"({calls} calls, {ARGS.threads} threads)")


if __name__ == "__main__":
    export() if ARGS.mode == "export" else run()
    sys.exit(0)
