"""A corpus of millions of lines, streamed: peak memory and time to the
first training step.

    python benchmarks/large_corpus.py                  # 2,000,000 lines
    python benchmarks/large_corpus.py --lines 200000

Writes a generated TSV file (the development corpus' pairs, each made unique
with a running number, or number words when that corpus is absent), then,
in a fresh process: learns the joint vocabulary from a 100,000-pair sample,
chooses lengths from that sample, builds the training stream
(`keras_xformer.data.stream_pairs` + `make_stream_dataset`: read line by
line, split by a stable hash, shuffled in a buffer, batched by tokens) and
runs `model.fit` for a few steps. Prints the peak resident memory
(`ru_maxrss`) and the seconds from the start to the end of the first step,
against the same for loading the whole file into Python lists
(`parallel_text.load_tsv`) and tokenizing it with `make_dataset`.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def generate(path, lines):
    corpus = "/work/corpus/en_fr.tsv"
    base = []
    if os.path.exists(corpus):
        with open(corpus, encoding="utf-8") as f:
            base = [line.rstrip("\n").split("\t")[:2] for line in f]
    if not base:
        from num2words import num2words

        base = [(num2words(n), num2words(n, lang="fr")) for n in range(5000)]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            source, target = base[i % len(base)]
            f.write(f"{source} ({i})\t{target} ({i})\n")


def measure(path, mode, steps):
    start = time.time()
    import keras

    from keras_xformer import pipeline
    from keras_xformer.data import make_dataset
    from keras_xformer.data import make_stream_dataset
    from keras_xformer.data import sample_texts
    from keras_xformer.data import stream_pairs
    from keras_xformer.losses import MaskedSparseCategoricalCrossentropy
    from keras_xformer.text import WordPieceTokenizer

    if mode == "stream":
        sample = sample_texts(path, 100000)
    else:
        from keras_xformer.datasets import parallel_text

        train, _, _ = parallel_text.load_tsv(path, split="hash")
        sample = (train[0][:100000], train[1][:100000])
    tokenizer = WordPieceTokenizer.train(sample[0] + sample[1], 8000, lower_case=False)
    source_length, target_length, _, _ = pipeline.choose_lengths(
        tokenizer, tokenizer, sample, percentile=99.0)
    if mode == "stream":
        data = make_stream_dataset(stream_pairs(path), tokenizer, tokenizer, source_length,
                                   target_length, tokens_per_batch=3000)
    else:
        data = make_dataset(*train, tokenizer, tokenizer, source_length, target_length,
                            bucket_boundaries=[4, 8, 12, 16, 24, 32, 48],
                            tokens_per_batch=3000)
    ready = time.time() - start
    model = pipeline.build_model("tiny", (tokenizer.vocabulary_size,) * 2, True)
    model.compile("adam", MaskedSparseCategoricalCrossentropy())
    first = {}

    class First(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            first.setdefault("seconds", time.time() - start)

    model.fit(data.take(steps), epochs=1, callbacks=[First()], verbose=0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "data_ready_seconds": ready,
            "first_step_seconds": first["seconds"], "peak_mb": peak_mb}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--file", default="/tmp/kx_large_corpus.tsv")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--measure", choices=["stream", "lists"], default=None)
    args = parser.parse_args(argv)
    if args.measure:
        print("RESULT " + json.dumps(measure(args.file, args.measure, args.steps)), flush=True)
        return 0
    start = time.time()
    generate(args.file, args.lines)
    print(f"Generated {args.lines} lines ({os.path.getsize(args.file) / 2**20:.0f} MB) "
          f"in {time.time() - start:.0f} s", flush=True)
    results = []
    for mode in ("stream", "lists"):
        output = subprocess.run(
            [sys.executable, __file__, "--file", args.file, "--steps", str(args.steps),
             "--measure", mode], capture_output=True, text=True, cwd=ROOT)
        lines = [line for line in output.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            print(output.stderr[-3000:])
            continue
        result = json.loads(lines[0][len("RESULT "):])
        results.append(result)
        print(f"{mode:7s}: peak memory {result['peak_mb']:.0f} MB, data ready after "
              f"{result['data_ready_seconds']:.1f} s, first training step done after "
              f"{result['first_step_seconds']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
