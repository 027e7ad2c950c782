"""Train a Transformer to translate number words (English to French), then
evaluate and export it.

    python examples/translate_numbers.py                 # the default run
    python examples/translate_numbers.py --pair en-de --epochs 4
    python examples/translate_numbers.py --data pairs.tsv --out saved_models/mine

Writes to `--out` (default `saved_models/numbers_en_fr/`): `model.keras`,
`source_vocab.txt`, `target_vocab.txt`, `metrics.json`, `attention.png`,
and the exports `serving/`, `translator.tflite`, `translator_int8.tflite`
when `keras_xformer.export` is available. Killed and started again with the
same command, it resumes from its last completed epoch.

On several machines (or processes), start the same command on each with its
`TF_CONFIG` (see the README, "Training on several machines"): they train one
model with `MultiWorkerMirroredStrategy`, `--batch-size` being the global
batch; only the chief writes to `--out`, the other workers keep their files
in a temporary folder. With more than one GPU, `MirroredStrategy` is used.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import zlib

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ARTEFACTS = (
    "model.keras",
    "source_vocab.txt",
    "target_vocab.txt",
    "metrics.json",
    "attention.png",
    "serving",
    "translator.tflite",
    "translator_int8.tflite",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", default="en-fr", choices=["en-fr", "en-de"],
                        help="language pair of the embedded number-words corpus")
    parser.add_argument("--data", help="train on your own TSV corpus (source<TAB>target per line)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs")
    parser.add_argument("--train-size", type=int, default=None, help="training pairs")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="global batch size (split over devices and workers)")
    parser.add_argument("--learning-rate", type=float, default=2e-3,
                        help="peak learning rate of the warm-up schedule")
    parser.add_argument("--vocabulary-size", type=int, default=None,
                        help="word pieces per vocabulary (default: from the corpus size)")
    parser.add_argument("--out", default=None, help="output folder")
    parser.add_argument("--beam", type=int, default=0,
                        help="beam size for the evaluation (0: greedy)")
    parser.add_argument("--precision", default="float32",
                        choices=["float32", "mixed_bfloat16", "mixed_float16"])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "base", "big"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace artefacts already in --out")
    parser.add_argument("--no-export", action="store_true",
                        help="skip the SavedModel and TFLite exports")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs <= 0:
        parser.error("--epochs must be positive")
    if args.train_size is not None and args.train_size <= 0:
        parser.error("--train-size must be positive")
    if args.beam < 0:
        parser.error("--beam must be >= 0")
    if args.out is None:
        if args.data:
            name = os.path.splitext(os.path.basename(args.data))[0]
            args.out = os.path.join("saved_models", name)
        else:
            args.out = os.path.join("saved_models", "numbers_" + args.pair.replace("-", "_"))
    return args


def existing_artefacts(out):
    return [name for name in ARTEFACTS if os.path.exists(os.path.join(out, name))]


def load_corpus(args):
    from keras_xformer.datasets import number_words
    from keras_xformer.datasets import parallel_text

    if args.data:
        return parallel_text.load_tsv(args.data, seed=args.seed)
    train_size = args.train_size or 24000
    return number_words.load_data(
        pair=args.pair, train_size=train_size, validation_size=500,
        test_size=1000, seed=args.seed,
    )


def tokenizers(work, train, vocabulary_size):
    """Train the two vocabularies, or reload them when resuming (a resumed
    run must see the ids its checkpoint was trained with)."""
    from keras_xformer.text import WordPieceTokenizer

    result = []
    for name, texts in (("source_vocab.txt", train[0]), ("target_vocab.txt", train[1])):
        path = os.path.join(work, name)
        if os.path.exists(path):
            tokenizer = WordPieceTokenizer.load(path)
        else:
            tokenizer = WordPieceTokenizer.train(texts, vocabulary_size)
            tokenizer.save(path + ".tmp")
            os.replace(path + ".tmp", path)
        result.append(tokenizer)
    return result


def translate(model, source_tokenizer, target_tokenizer, texts, source_length,
              max_length, beam=0, batch_size=250):
    from keras_xformer.data import encode_source

    outputs = []
    for i in range(0, len(texts), batch_size):
        ids = encode_source(source_tokenizer, texts[i : i + batch_size], source_length)
        generated = model.generate(
            ids.numpy(), max_length=max_length,
            method="beam" if beam else "greedy", beam_size=max(beam, 1),
        )
        outputs += [t.decode("utf-8") for t in target_tokenizer.detokenize(generated).numpy()]
    return outputs


def plot_attention(model, source_tokenizer, target_tokenizer, source_text,
                   source_length, max_length, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from keras_xformer.data import encode_source

    source_ids = encode_source(source_tokenizer, [source_text], source_length).numpy()
    generated = model.generate(source_ids, max_length=max_length)
    target_ids = np.concatenate([[[model.start_token_id]], generated], axis=1)
    target_ids = target_ids[:, : int((target_ids != 0).sum())]
    weights = model.cross_attention_weights(source_ids, target_ids)[-1]
    weights = np.asarray(weights, "float32")[0].mean(axis=0)  # mean over heads
    source_tokens = [source_tokenizer.id_to_token(int(i)) for i in source_ids[0] if i]
    target_tokens = [target_tokenizer.id_to_token(int(i)) for i in target_ids[0, 1:]]
    weights = weights[: len(target_tokens), : len(source_tokens)]
    fig, ax = plt.subplots(
        figsize=(max(5.5, 1.5 + 0.5 * len(source_tokens)), 1.5 + 0.4 * len(target_tokens))
    )
    ax.imshow(weights, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(source_tokens)), source_tokens, rotation=60, ha="right")
    ax.set_yticks(range(len(target_tokens)), target_tokens)
    ax.set_xlabel("source")
    ax.set_ylabel("generated")
    ax.set_title("Cross-attention, last decoder block\n(mean over heads)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def refuse_to_overwrite(out, found):
    print(
        f"{out} already holds {', '.join(found)}: nothing was changed. "
        "Pass --overwrite to replace them, or --out for another folder.",
        file=sys.stderr,
    )
    return 2


def vocabulary_fingerprint(work):
    """crc32 of both vocabulary files: every worker must train with the same ids."""
    fingerprint = []
    for name in ("source_vocab.txt", "target_vocab.txt"):
        with open(os.path.join(work, name), "rb") as f:
            fingerprint.append(zlib.crc32(f.read()))
    return fingerprint


def main(argv=None):
    args = parse_args(argv)
    out = args.out
    multi_worker = bool(os.environ.get("TF_CONFIG"))
    if not multi_worker and existing_artefacts(out) and not args.overwrite:
        return refuse_to_overwrite(out, existing_artefacts(out))  # before loading TensorFlow

    from keras_xformer import distribute

    # Before any other TensorFlow work (collectives are set up at start-up).
    # With TF_CONFIG this waits until every worker has started.
    strategy = distribute.strategy_from_environment()
    chief = distribute.is_chief(strategy)
    if multi_worker:
        # Only the chief looks at --out; the workers follow its decision.
        found = existing_artefacts(out) if chief else []
        if distribute.broadcast_from_chief(strategy, int(bool(found and not args.overwrite))):
            if chief:
                return refuse_to_overwrite(out, found)
            print("The chief refused to overwrite its artefacts: stopping.", file=sys.stderr)
            return 2
        # Workers started with other arguments would not train one model.
        # (--out and --data may be mounted elsewhere on other machines; the
        # vocabularies are compared later.)
        same = {k: v for k, v in sorted(vars(args).items()) if k not in ("out", "data")}
        distribute.assert_same_on_all_workers(
            strategy, zlib.crc32(json.dumps(same).encode()), "the command-line arguments")
    if strategy.num_replicas_in_sync > 1:
        if multi_worker:
            resolver = strategy.cluster_resolver
            name = (f"MultiWorkerMirroredStrategy, task {resolver.task_type} "
                    f"{resolver.task_id}{' (chief)' if chief else ''}")
        else:
            name = type(strategy).__name__
        print(f"Training on {strategy.num_replicas_in_sync} replicas with {name}")

    import keras

    keras.utils.set_random_seed(args.seed)
    if args.precision != "float32":
        keras.config.set_dtype_policy(args.precision)
    # Work in progress (vocabularies, epoch backups) lives apart from the
    # artefacts, which are only replaced once a run has succeeded. Workers
    # other than the chief write nothing to --out: their vocabularies and
    # checkpoints go to a temporary folder, and they resume from the
    # chief's backup.
    chief_work = os.path.join(out, ".work")
    backup = os.path.join(chief_work, "backup")
    if chief:
        work = chief_work
        os.makedirs(out, exist_ok=True)
        if args.overwrite:
            shutil.rmtree(work, ignore_errors=True)  # start afresh, no resume
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix="translate_numbers_workertemp_")
    try:
        return train_evaluate_export(args, strategy, chief, work, backup)
    finally:
        if not chief:
            shutil.rmtree(work, ignore_errors=True)


def train_evaluate_export(args, strategy, chief, work, backup):
    import keras
    import numpy as np
    import sacrebleu
    import tensorflow as tf

    from keras_xformer.data import choose_length
    from keras_xformer.data import make_dataset
    from keras_xformer.distribute import MultiWorkerBackupAndRestore
    from keras_xformer.distribute import assert_same_on_all_workers
    from keras_xformer.losses import MaskedSparseCategoricalCrossentropy
    from keras_xformer.metrics import MaskedAccuracy
    from keras_xformer.models import Transformer
    from keras_xformer.schedules import TransformerSchedule

    out = args.out
    if not args.overwrite and os.path.exists(os.path.join(backup, "training_metadata.json")):
        print(f"Resuming the interrupted run found in {backup}/")

    train, validation, test = load_corpus(args)
    print(f"Corpus: {len(train[0])} training, {len(validation[0])} validation, "
          f"{len(test[0])} test pairs. Example: {train[0][0]!r} -> {train[1][0]!r}")
    vocabulary_size = args.vocabulary_size or int(min(8000, max(400, len(train[0]) // 10)))
    source_tokenizer, target_tokenizer = tokenizers(work, train, vocabulary_size)
    assert_same_on_all_workers(strategy, vocabulary_fingerprint(work), "the vocabularies")
    source_length = choose_length(source_tokenizer, train[0], cap=256)
    target_length = choose_length(target_tokenizer, train[1], cap=256)
    print(f"Vocabularies: {source_tokenizer.vocabulary_size} source, "
          f"{target_tokenizer.vocabulary_size} target word pieces; "
          f"lengths: source {source_length}, target {target_length} tokens")

    # A user's corpus mixes short and long sentences: batching by length
    # trained 3.8x more real tokens per second than padding every batch to
    # the longest sentence (benchmarks/bucketing.py). The number words are
    # all short, so they keep one static shape.
    buckets = None
    if args.data:
        buckets = [b for b in (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192) if b < target_length]
        print(f"Batching by target length, bucket boundaries {buckets}")
    train_data = make_dataset(*train, source_tokenizer, target_tokenizer, source_length,
                              target_length, batch_size=args.batch_size, seed=args.seed,
                              bucket_boundaries=buckets)
    validation_data = make_dataset(*validation, source_tokenizer, target_tokenizer,
                                   source_length, target_length,
                                   batch_size=args.batch_size, shuffle=False)
    # Every worker reads the same (identically shuffled) pipeline and keeps
    # its share of each global batch.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_data = train_data.with_options(options)
    validation_data = validation_data.with_options(options)

    with strategy.scope():
        model = Transformer.from_preset(
            args.preset,
            source_vocabulary_size=source_tokenizer.vocabulary_size,
            target_vocabulary_size=target_tokenizer.vocabulary_size,
            dropout=0.1,
        )
        model.build()
    epochs = args.epochs or 5
    steps_per_epoch = int(np.ceil(len(train[0]) / args.batch_size))
    # The paper's schedule, warm-up over the first epoch (at most 4000
    # steps), scaled so that its peak is --learning-rate: the paper's own
    # peak (d_model**-0.5 * warmup**-0.5) is far too high for a tiny model
    # warmed up this briefly.
    warmup = max(50, min(4000, steps_per_epoch))
    schedule = TransformerSchedule(
        model.hidden_dim, warmup_steps=warmup,
        scale=args.learning_rate * (model.hidden_dim * warmup) ** 0.5,
    )
    with strategy.scope():
        model.compile(
            optimizer=keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.98, epsilon=1e-9),
            loss=MaskedSparseCategoricalCrossentropy(label_smoothing=0.1),
            metrics=[MaskedAccuracy()],
            # On this job's shapes XLA trained 9% faster on this CPU
            # (benchmarks/train.py: 7,924 against 7,269 tokens/s), within
            # the machine's run-to-run drift, and its compilation (first
            # step 26 s against 16 s) takes back about half of what it would
            # save over the default 5 epochs; XLA around a multi-device step
            # fails in TensorFlow. Decoding and the exports use XLA.
            jit_compile=False,
        )
    best_path = os.path.join(work, "best.keras")
    callbacks = [
        # The chief writes the backup, other workers restore from it too.
        MultiWorkerBackupAndRestore(backup),
        keras.callbacks.ModelCheckpoint(best_path, monitor="val_masked_accuracy",
                                        mode="max", save_best_only=True),
    ]
    start = time.perf_counter()
    history = model.fit(train_data, validation_data=validation_data, epochs=epochs,
                        callbacks=callbacks, verbose=2 if os.environ.get("CI") else 1,
                        shuffle=False)  # the dataset reshuffles itself every epoch
    train_seconds = time.perf_counter() - start
    if not chief:
        print("Training done; the chief evaluates and writes the artefacts.")
        return 0
    if os.path.exists(best_path):
        model = keras.models.load_model(best_path)

    max_length = target_length
    start = time.perf_counter()
    hypotheses = translate(model, source_tokenizer, target_tokenizer, test[0],
                           source_length, max_length, beam=args.beam)
    translate_seconds = time.perf_counter() - start
    references = test[1]
    exact = float(np.mean([h == r for h, r in zip(hypotheses, references)]))
    bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
    print(f"\nTest ({len(references)} pairs, {'beam %d' % args.beam if args.beam else 'greedy'}): "
          f"BLEU {bleu:.2f}, exact match {exact:.3f}, "
          f"{1000 * translate_seconds / len(references):.1f} ms per sentence")
    for source, hypothesis, reference in list(zip(test[0], hypotheses, references))[:5]:
        mark = "ok " if hypothesis == reference else "ERR"
        print(f"  [{mark}] {source}  ->  {hypothesis}" + ("" if mark == "ok " else f"   (expected: {reference})"))

    # Everything is written to a staging folder first, then moved over the
    # previous artefacts: a run that fails leaves them as they were.
    staging = os.path.join(out, ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    model.save(os.path.join(staging, "model.keras"))
    source_tokenizer.save(os.path.join(staging, "source_vocab.txt"))
    target_tokenizer.save(os.path.join(staging, "target_vocab.txt"))
    plot_attention(model, source_tokenizer, target_tokenizer, test[0][0], source_length,
                   max_length, os.path.join(staging, "attention.png"))
    metrics = {
        "bleu": bleu,
        "exact_match": exact,
        "train_seconds": train_seconds,
        "epochs": epochs,
        "train_pairs": len(train[0]),
        "test_pairs": len(references),
        "decoding": f"beam {args.beam}" if args.beam else "greedy",
        "precision": args.precision,
        "replicas": strategy.num_replicas_in_sync,
        # Per epoch, the epochs this run trained (a resumed run: the rest).
        "history": {name: [float(v) for v in values]
                    for name, values in history.history.items()},
        "source_length": source_length,
        "target_length": target_length,
        "parameters": model.count_params(),
    }
    if not args.no_export:
        metrics.update(export_all(model, source_tokenizer, target_tokenizer, test,
                                  source_length, max_length, staging))
    with open(os.path.join(staging, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    for name in os.listdir(staging):
        target = os.path.join(out, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
    os.rmdir(staging)
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nWrote {', '.join(sorted(existing_artefacts(out)))} to {out}/")
    return 0


def export_all(model, source_tokenizer, target_tokenizer, test, source_length, max_length, folder):
    """SavedModel and TFLite exports, with their sizes and test-split BLEU."""
    import numpy as np
    import sacrebleu
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from keras_xformer.data import encode_source
    from keras_xformer.export import export_saved_model
    from keras_xformer.export import export_tflite

    sources, references = test
    results = {}
    serving = os.path.join(folder, "serving")
    export_saved_model(serving, model, source_tokenizer, target_tokenizer, source_length, max_length)
    translate = tf.saved_model.load(serving).signatures["serving_default"]
    served = []
    for i in range(0, len(sources), 250):
        out = translate(text=tf.constant(sources[i : i + 250]))["translation"].numpy()
        served += [t.decode("utf-8") for t in out]
    results["serving_bleu"] = sacrebleu.corpus_bleu(served, [references]).score
    results["serving_mb"] = sum(
        os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(serving) for f in files
    ) / 2**20
    source_ids = encode_source(source_tokenizer, sources, source_length).numpy()
    for name, quantization in (("translator.tflite", None), ("translator_int8.tflite", "dynamic_int8")):
        path = os.path.join(folder, name)
        size = export_tflite(path, model, source_length, max_length, quantization=quantization)
        runner = Interpreter(model_path=path).get_signature_runner("serving_default")
        ids = np.concatenate([runner(source_ids=row[None])["target_ids"] for row in source_ids])
        texts = [t.decode("utf-8") for t in target_tokenizer.detokenize(ids).numpy()]
        key = "tflite_int8" if quantization else "tflite"
        results[f"{key}_bleu"] = sacrebleu.corpus_bleu(texts, [references]).score
        results[f"{key}_mb"] = size / 2**20
        if quantization is None:
            generated = model.generate(source_ids, max_length=max_length)
            results["tflite_equals_generate"] = bool(np.array_equal(ids, generated))
    print("Exports: " + ", ".join(
        f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in results.items()))
    return results


if __name__ == "__main__":
    sys.exit(main())
