"""The own-data recipe's levers at equal optimizer steps, on an accelerator.

A whole `xformer train --data` run on 2 CPU cores takes 13 minutes and buys
about 6,600 optimizer steps, and two runs of one recipe differ by about 0.7
held-out BLEU: screening a lever there costs a quarter of an hour per run.
Levers that do not change what a step costs (schedule, regularization,
normalization placement, subword sampling at a fixed token count per batch)
can be compared at equal steps anywhere. This script trains each variant for
the same number of steps on the JAX backend (a GPU, where each takes about a
minute) on exactly the batches the CPU recipe makes (the same tokenizer,
masked spans, lengths, length buckets and sentences per batch), and reports
validation loss and greedy BLEU/chrF on the run's own validation and test
splits (sentinels left in: a relative figure; never `test.tsv`). The CPU
runs (`real_text.py run`) then check the winners.

    # Here (TensorFlow: the pipeline's tokenization and span masking):
    python benchmarks/gpu_screen.py prepare /work/corpus/runs/A_base .gpu/screen.npz
    # On the accelerator (Keras on JAX; no TensorFlow needed):
    KERAS_BACKEND=jax python benchmarks/gpu_screen.py train .gpu/screen.npz --steps 6600
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Bucket boundaries and sentences per batch of the CPU recipe (its log:
# "Batching by length: about 800 tokens per batch").
BOUNDARIES = (4, 8, 12, 16, 24, 32, 48, 64)
SAMPLED = {"0.3": 6, "0.6": 6}  # subword alpha -> segmentations drawn per text


def prepare(folder, path, corpus="/work/corpus/train.tsv"):
    import numpy as np

    from keras_xformer import pipeline
    from keras_xformer.data import _sampled_ids
    from keras_xformer.data import encode_source
    from keras_xformer.data import encode_target

    metrics = json.load(open(os.path.join(folder, "metrics.json")))
    source_length, target_length = metrics["source_length"], metrics["target_length"]
    args = argparse.Namespace(data=corpus, seed=0, held_out_pairs=500, train_size=None)
    train, validation, test = pipeline.load_corpus(args)
    spans = pipeline.load_span_protector(folder)
    train, validation = spans.protect_pairs(*train), spans.protect_pairs(*validation)
    test = spans.protect_pairs(*test)
    source_tokenizer, target_tokenizer = pipeline.load_tokenizers(folder)
    lengths = pipeline.choose_lengths(source_tokenizer, target_tokenizer, train, 99.0)
    if tuple(lengths[:2]) != (source_length, target_length):
        raise ValueError(f"Lengths {lengths[:2]} differ from the run's "
                         f"{(source_length, target_length)}: another corpus or split?")
    keep = lengths[2]
    train = ([s for s, k in zip(train[0], keep) if k], [t for t, k in zip(train[1], keep) if k])
    arrays = {}

    def ragged(name, ids):
        arrays[name + "_values"] = ids.flat_values.numpy().astype(np.int16)
        arrays[name + "_lengths"] = ids.row_lengths().numpy().astype(np.int16)

    import tensorflow as tf

    def encoded(encode, tokenizer, texts, length):
        rows = []
        for i in range(0, len(texts), 8192):
            dense = encode(tokenizer, tf.constant(texts[i : i + 8192]), length)
            rows.append(tf.RaggedTensor.from_tensor(dense, padding=0))
        return tf.concat(rows, axis=0)

    source = encoded(encode_source, source_tokenizer, train[0], source_length)
    target = encoded(encode_target, target_tokenizer, train[1], target_length)
    ragged("source", source)
    ragged("target", target)
    for alpha, samples in SAMPLED.items():
        for side, tokenizer, texts, usual, length in (
                ("source", source_tokenizer, train[0], source, source_length),
                ("target", target_tokenizer, train[1], target, target_length)):
            stacked = _sampled_ids(tokenizer, texts, usual, length, float(alpha), samples,
                                   0, source=side == "source")
            flat = stacked.values  # (texts * samples, None): text-major
            for k in range(samples):
                ragged(f"{side}_a{alpha}_{k}",
                       tf.gather(flat, tf.range(k, len(texts) * samples, samples)))
    held = (validation[0] + test[0], validation[1] + test[1])
    ragged("held_source", encoded(encode_source, source_tokenizer, held[0], source_length))
    ragged("held_target", encoded(encode_target, target_tokenizer, held[1], target_length))
    arrays["held_references"] = np.array(held[1], dtype=object).astype(str)
    arrays["lengths"] = np.array([source_length, target_length])
    arrays["vocabulary_size"] = np.array(source_tokenizer.vocabulary_size)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(path, **arrays)
    with open(os.path.join(folder, "source.spm"), "rb") as f:
        open(os.path.splitext(path)[0] + ".spm", "wb").write(f.read())
    print(f"Wrote {path}: {len(train[0])} training pairs, {len(held[0])} held pairs, "
          f"{os.path.getsize(path) / 1e6:.1f} MB")


# Variants: keyword overrides of the base recipe.
VARIANTS = {
    "base": {},
    "base_seed1": {"seed": 1},
    "subword_0.3": {"alpha": "0.3"},
    "subword_0.6": {"alpha": "0.6"},
    "subword_0.6_seed1": {"alpha": "0.6", "seed": 1},
    "pre_ln": {"norm_first": True},
    "pre_ln_lr3e-3": {"norm_first": True, "learning_rate": 3e-3},
    "dropout_0.2": {"dropout": 0.2},
    "heads_8": {"num_heads": 8},
    "heads_2": {"num_heads": 2},
    "smoothing_0.2": {"label_smoothing": 0.2},
    "warmup_2000": {"warmup": 2000},
    "cooldown_0.4": {"cooldown": 0.4},
}
BASE = dict(seed=0, alpha=None, norm_first=False, learning_rate=2e-3, dropout=0.1,
            num_heads=4, label_smoothing=0.1, warmup=583, cooldown=0.2)


def train(path, steps, names, out, max_seconds, held=None):
    import numpy as np
    import keras
    import sacrebleu
    import sentencepiece

    from keras_xformer.losses import MaskedSparseCategoricalCrossentropy
    from keras_xformer.models import Transformer

    data = np.load(path, allow_pickle=False)
    source_length, target_length = (int(x) for x in data["lengths"])
    vocabulary = int(data["vocabulary_size"])
    processor = sentencepiece.SentencePieceProcessor(
        model_file=os.path.splitext(path)[0] + ".spm")

    def rows(name):
        values, lengths = data[name + "_values"].astype(np.int32), data[name + "_lengths"]
        return np.split(values, np.cumsum(lengths)[:-1])

    def dense(row_list, width):
        out = np.zeros((len(row_list), width), np.int32)
        for i, r in enumerate(row_list):
            out[i, : len(r)] = r[:width]
        return out

    longest = max(source_length, target_length)
    uppers = list(BOUNDARIES) + [longest + 2]
    sizes = [max(1, 800 // u) for u in uppers]
    # Three padded shapes instead of nine (each shape is a compilation);
    # padding rows carry no labels, so the loss (a mean over real tokens)
    # and the update are those of the CPU recipe's batch.
    shapes = [(sizes[0], 16), (sizes[4], 32), (sizes[6], longest + 1)]

    def shape_of(bucket):
        return 0 if uppers[bucket] <= 16 else 1 if uppers[bucket] <= 32 else 2

    plain = (rows("source"), rows("target"))
    held_source = dense(rows("held_source"), source_length)[:held]
    held_target = dense(rows("held_target"), target_length + 1)[:held]
    references = [str(r) for r in data["held_references"]][:held]
    results = {}
    began = time.time()
    for name in names:
        if time.time() - began > max_seconds:
            print(f"{name}: skipped (time)", flush=True)
            continue
        config = {**BASE, **VARIANTS[name]}
        rng = np.random.default_rng(config["seed"])
        keras.utils.set_random_seed(config["seed"])
        if config["alpha"]:
            k = SAMPLED[config["alpha"]]
            variants = ([rows(f"source_a{config['alpha']}_{i}") for i in range(k)],
                        [rows(f"target_a{config['alpha']}_{i}") for i in range(k)])
        else:
            variants = ([plain[0]], [plain[1]])

        def batches():
            count = len(plain[0])
            while True:
                order = rng.permutation(count)
                pick_s = rng.integers(0, len(variants[0]), count)
                pick_t = rng.integers(0, len(variants[1]), count)
                pending = [[] for _ in uppers]
                for i in order:
                    s, t = variants[0][pick_s[i]][i], variants[1][pick_t[i]][i]
                    key = max(len(s), len(t) - 1)
                    b = int(np.searchsorted(BOUNDARIES, key, side="right"))
                    pending[b].append((s, t))
                    if len(pending[b]) == sizes[b]:
                        yield b, pending[b]
                        pending[b] = []

        def assemble(bucket, pairs):
            rows_, width = shapes[shape_of(bucket)]
            source = np.zeros((rows_, width), np.int32)
            target = np.zeros((rows_, width + 1), np.int32)
            for i in range(rows_):
                s, t = pairs[min(i, len(pairs) - 1)]
                source[i, : len(s)] = s
                if i < len(pairs):
                    target[i, : len(t)] = t
                else:  # a copy of a real row without labels: it counts for nothing
                    target[i, 0] = 2
            return (source, target[:, :-1]), target[:, 1:]

        model = Transformer(vocabulary, vocabulary, num_layers=2, hidden_dim=128,
                            num_heads=config["num_heads"], intermediate_dim=512,
                            dropout=config["dropout"], share_embeddings=True,
                            tie_output_embeddings=True, norm_first=config["norm_first"])
        peak, warmup, cooldown = config["learning_rate"], config["warmup"], config["cooldown"]

        class Schedule(keras.optimizers.schedules.LearningRateSchedule):
            def __call__(self, step):
                step = keras.ops.cast(step, "float32") + 1.0
                rate = peak * keras.ops.minimum(step / warmup, keras.ops.sqrt(warmup / step))
                ramp = keras.ops.clip((steps - step) / (cooldown * steps), 0.0, 1.0)
                return rate * (ramp if cooldown else 1.0)

        model.compile(optimizer=keras.optimizers.Adam(Schedule(), beta_1=0.9, beta_2=0.98,
                                                      epsilon=1e-9),
                      loss=MaskedSparseCategoricalCrossentropy(
                          label_smoothing=config["label_smoothing"]),
                      jit_compile=True)
        start = time.time()
        stream = batches()
        losses = []
        for step in range(steps):
            bucket, pairs = next(stream)
            x, y = assemble(bucket, pairs)
            losses.append(float(model.train_on_batch(x, y)))
        train_seconds = time.time() - start
        # Validation loss with the training loss (label smoothing included),
        # over the run's own held-out pairs.
        evaluate = MaskedSparseCategoricalCrossentropy(label_smoothing=config["label_smoothing"])
        total, tokens = 0.0, 0
        for i in range(0, len(held_source), 128):
            x = (held_source[i : i + 128], held_target[i : i + 128, :-1])
            y = held_target[i : i + 128, 1:]
            logits = model.predict_on_batch(x)
            count = int((y != 0).sum())
            total += float(evaluate(y, logits)) * count
            tokens += count
        generated = []
        for i in range(0, len(held_source), 128):
            chunk = held_source[i : i + 128]
            ids = np.asarray(model.generate(chunk, max_length=target_length, method="greedy"))
            for row in ids:
                row = list(row)
                row = row[: row.index(3)] if 3 in row else row
                generated.append(processor.decode([int(t) for t in row if t > 3]))
        bleu = sacrebleu.corpus_bleu(generated, [references]).score
        chrf = sacrebleu.corpus_chrf(generated, [references]).score
        results[name] = {"config": config, "steps": steps, "train_seconds": train_seconds,
                         "validation_loss": total / tokens, "bleu_greedy": bleu,
                         "chrf_greedy": chrf, "loss_every_50": losses[::50][-5:]}
        print(f"{name}: validation loss {total / tokens:.4f}, greedy BLEU {bleu:.2f}, "
              f"chrF {chrf:.2f} ({steps} steps, {train_seconds:.0f} s)", flush=True)
        with open(out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("folder")
    p.add_argument("path")
    t = sub.add_parser("train")
    t.add_argument("path")
    t.add_argument("--steps", type=int, default=6600)
    t.add_argument("--variants", nargs="*", default=list(VARIANTS))
    t.add_argument("--out", default="screen.json")
    t.add_argument("--max-seconds", type=float, default=480,
                   help="start no variant after this many seconds")
    t.add_argument("--held", type=int, default=None, help="score only the first N held pairs")
    args = parser.parse_args(argv)
    if args.mode == "prepare":
        return prepare(args.folder, args.path)
    return train(args.path, args.steps, args.variants, args.out, args.max_seconds, args.held)


if __name__ == "__main__":
    sys.exit(main())
