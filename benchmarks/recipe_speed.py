"""Training steps per second of the own-data recipe on its real batches.

    python benchmarks/recipe_speed.py FOLDER [--corpus /work/corpus/train.tsv]
        [--variants float32 mixed_bfloat16 spe4] [--steps 150] [--rounds 3]

FOLDER is a trained `xformer train --data` folder: its tokenizers, span
settings and lengths give exactly the batches that run trained on (length
buckets, about `--batch-tokens` tokens each). Each variant compiles the
recipe's model (`build_model` with the folder's preset) and times `--steps`
training steps of `model.fit` on the same shuffled stream, in turns, for
`--rounds` rounds; it prints the median seconds per step, the real target
tokens per second and the ratio to the first variant. A time-budgeted run
trains for a fixed time, so steps per second is what a faster variant buys.

Variants:
    float32         the recipe as it is (the anchor)
    mixed_bfloat16  Keras' mixed precision policy (bfloat16 compute)
    spe4            `steps_per_execution=4`

(`jit_compile=True` is left out: every bucket shape, trimmed to its batch's
longest pair, is its own XLA compilation, and 100 steps compile dozens.)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def batches(folder, corpus, batch_tokens, seed=0):
    from keras_xformer import pipeline
    from keras_xformer.data import make_dataset
    from keras_xformer.datasets import parallel_text

    metrics = json.load(open(os.path.join(folder, "metrics.json")))
    source_tokenizer, target_tokenizer = pipeline.load_tokenizers(folder)
    spans = pipeline.load_span_protector(folder)
    train, _, _ = parallel_text.load_tsv(corpus, seed=seed, split="hash")
    if spans is not None:
        train = spans.protect_pairs(*train)
    source_length, target_length = metrics["source_length"], metrics["target_length"]
    _, _, keep, _ = pipeline.choose_lengths(source_tokenizer, target_tokenizer, train,
                                            percentile=99.0)
    train = ([s for s, k in zip(train[0], keep) if k], [t for t, k in zip(train[1], keep) if k])
    longest = max(source_length, target_length)
    buckets = [b for b in pipeline.LENGTH_BUCKETS if b < longest]
    data = make_dataset(*train, source_tokenizer, target_tokenizer, source_length,
                        target_length, seed=seed, bucket_boundaries=buckets,
                        tokens_per_batch=batch_tokens).repeat()
    sizes = (source_tokenizer.vocabulary_size, target_tokenizer.vocabulary_size)
    return data, sizes, metrics.get("preset", "tiny"), bool(metrics["tokenizer"]["joint"])


def measure(args):
    import keras
    import numpy as np

    from keras_xformer import pipeline
    from keras_xformer.losses import MaskedSparseCategoricalCrossentropy

    data, sizes, preset, joint = batches(args.folder, args.corpus, args.batch_tokens)
    models = {}
    for variant in args.variants:
        keras.config.set_dtype_policy(
            "mixed_bfloat16" if variant == "mixed_bfloat16" else "float32")
        keras.utils.set_random_seed(0)
        model = pipeline.build_model(preset, sizes, joint)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3, beta_1=0.9, beta_2=0.98, epsilon=1e-9),
            loss=MaskedSparseCategoricalCrossentropy(),
            jit_compile=False,
            steps_per_execution=4 if variant == "spe4" else 1)
        models[variant] = model
    keras.config.set_dtype_policy("float32")

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_train_end(self, logs=None):
            self.seconds = time.perf_counter() - self.start

    iterator = iter(data)
    # Real target tokens per batch, to turn steps into tokens.
    sample = [next(iterator) for _ in range(200)]
    tokens = float(np.mean([np.count_nonzero(labels) for _, labels in sample]))
    times = {v: [] for v in args.variants}
    for variant in args.variants:  # warm-up: traces, compilations of every bucket shape
        start = time.perf_counter()
        models[variant].fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0)
        print(f"{variant}: warm-up {time.perf_counter() - start:.1f} s", flush=True)
    for round_ in range(args.rounds):
        for variant in args.variants:
            clock = Clock()
            models[variant].fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0,
                                callbacks=[clock])
            times[variant].append(clock.seconds / args.steps)
            print(f"round {round_ + 1} {variant}: {clock.seconds / args.steps * 1e3:.1f} ms/step",
                  flush=True)
    anchor = statistics.median(times[args.variants[0]])
    print(f"{'variant':16} {'ms/step':>8} {'spread':>15} {'tokens/s':>9} {'speed':>6}")
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"{name:16} {seconds * 1e3:8.1f} {min(values) * 1e3:7.1f}-{max(values) * 1e3:<7.1f}"
              f" {tokens / seconds:9.0f} {anchor / seconds:5.2f}x", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--corpus", default="/work/corpus/train.tsv")
    parser.add_argument("--variants", nargs="+", default=["float32", "mixed_bfloat16", "spe4"])
    parser.add_argument("--batch-tokens", type=int, default=800)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in lscpu]
    print(f"CPU flags: {' '.join(flags)}; {os.cpu_count()} cores", flush=True)
    return measure(args)


if __name__ == "__main__":
    sys.exit(main())
