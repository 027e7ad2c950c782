"""Quality on real text: the own-data recipe, its levers, and keras-hub.

    python benchmarks/build_corpus.py --out /work/corpus       # the corpus (once)
    python benchmarks/real_text.py run NAME [xformer train flags...]
    python benchmarks/real_text.py score NAME [--length-penalty X]  # held-out scores of runs/NAME
    python benchmarks/real_text.py keras_hub --minutes 10
    python benchmarks/real_text.py latency FOLDER
    python benchmarks/real_text.py levers [--lever-epochs 4] [NAME_PREFIX]  # one lever at a time
    python benchmarks/real_text.py table                       # RESULTS.md rows
    python benchmarks/real_text.py penalty NAME                # beam settings, on the run's own splits
    python benchmarks/real_text.py sentences NAME              # whole texts vs sentence by sentence

`run` trains with `xformer train --data CORPUS/train.tsv` plus the given
flags (the defaults are the recipe; a flag turns one lever), then scores the
held-out `CORPUS/test.tsv` (pairs no run ever sees, split by a stable hash in
build_corpus.py) with cased sacrebleu BLEU and chrF, beam 4 and greedy.
Results go to `CORPUS/runs/NAME/` and `CORPUS/runs/results.json`.

`keras_hub` trains keras-hub's `TransformerEncoder`/`TransformerDecoder`
with `TokenAndPositionEmbedding` and its own `WordPieceTokenizer`
(vocabularies from `compute_word_piece_vocabulary`), the same size as our
default preset (`--preset`, default `tiny`), in `model.fit` for
`--minutes` (give it our default run's training time), and scores it on the
same held-out pairs with greedy decoding.

`penalty` translates the run's own validation and test splits (cut from
train.tsv by `xformer train`; never `test.tsv`, so choosing a decoding
setting by them leaves the held-out scores honest) with beam 4 at several
length penalties and prints BLEU, chrF and the length ratio for each.

`sentences` translates the run's own splits and the held-out `test.tsv`
with beam 4, each text whole and sentence by sentence
(`keras_xformer.text.sentences`), and prints BLEU and chrF for all pairs and
for the texts of several sentences.

`latency` measures the SavedModel's time per sentence for 6-word inputs
when exported with the trained (percentile) lengths and with the corpus'
longest lengths, in one process.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def corpus_dir():
    return os.environ.get("KX_CORPUS", "/work/corpus")


def record(name, result):
    path = os.path.join(corpus_dir(), "runs", "results.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    results[name] = result
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)


def held_out():
    from keras_xformer.datasets import parallel_text

    pairs = parallel_text._read_pairs(os.path.join(corpus_dir(), "test.tsv"))
    return [s for s, _ in pairs], [t for _, t in pairs]


def run(name, flags):
    out = os.path.join(corpus_dir(), "runs", name)
    command = [sys.executable, "-m", "keras_xformer", "train", "--data",
               os.path.join(corpus_dir(), "train.tsv"), "--out", out, "--overwrite", *flags]
    print(" ".join(command), flush=True)
    start = time.time()
    subprocess.run(command, check=True, cwd=ROOT)
    return score(name, flags, time.time() - start)


def score(name, flags=(), wall=None):
    """Held-out scores of a trained folder, beam 4 and greedy."""
    from keras_xformer import pipeline

    out = os.path.join(corpus_dir(), "runs", name)

    model, source, target, metrics = pipeline.load_translator(out)
    sources, references = held_out()
    result = {"flags": list(flags), "wall_seconds": wall, "epochs": metrics.get("epochs"),
              "train_seconds": metrics.get("train_seconds"), "preset": metrics.get("preset"),
              "parameters": metrics.get("parameters"), "tokenizer": metrics.get("tokenizer"),
              "weights": metrics.get("weights"),
              "lengths": [metrics.get("source_length"), metrics.get("target_length")]}
    # The run's own length penalty, or the one given (`score NAME
    # --length-penalty X` rescores a folder trained before it was kept).
    flags = list(flags)
    alpha = (float(flags[flags.index("--length-penalty") + 1]) if "--length-penalty" in flags
             else metrics.get("length_penalty", 0.6))
    result["length_penalty"] = alpha
    # Sentence by sentence (the default since session 12) unless the run
    # was trained with --whole-texts or `score NAME --whole-texts`.
    split = "--whole-texts" not in flags and metrics.get("split_sentences", True)
    result["split_sentences"] = split
    for beam in (4, 0):
        scores, hypotheses = pipeline.evaluate(
            model, source, target, (sources, references), metrics["source_length"],
            metrics["target_length"], beam=beam, show=6 if beam else 0,
            label=f"held-out test.tsv ({name})", spans=pipeline.load_span_protector(out),
            length_penalty=alpha, split_sentences=split)
        result["beam4" if beam else "greedy"] = scores
        if beam:
            suffix = "" if alpha == metrics.get("length_penalty", 0.6) else f"_lp{alpha:g}"
            suffix += "" if split else "_whole"
            with open(os.path.join(out, f"test_translations{suffix}.txt"), "w",
                      encoding="utf-8") as f:
                f.write("\n".join(hypotheses) + "\n")
    record(name + suffix, result)
    return 0


# One lever turned at a time against the recipe's defaults (issue 16, items
# 1-4). Each variant is `xformer train` with the base flags plus its own.
LEVERS = {
    "defaults": [],
    "lengths: longest pair, not 99th percentile": ["--length-percentile", "100"],
    "batches: 64 sentences, not 1500 tokens": ["--batch-tokens", "0"],
    "no label smoothing": ["--label-smoothing", "0"],
    "schedule: inverse square root, not linear decay": ["--schedule", "inverse-sqrt"],
    "tokenizer: WordPiece, not SentencePiece": ["--tokenizer", "wordpiece"],
    "separate vocabularies, not joint": ["--joint-vocabulary", "no"],
    "no checkpoint averaging": ["--average-checkpoints", "1"],
    "learning rate 4e-3, not 2e-3": ["--learning-rate", "4e-3"],
    "vocabulary 8000, not 3671": ["--vocabulary-size", "8000"],
    "batches: 800 tokens, not 1500": ["--batch-tokens", "800"],
    "vocabulary 2000, not 3671": ["--vocabulary-size", "2000"],
    # Issue 16, identifiers: the defaults mask protected spans (benchmarks/spans.py).
    "no protected spans": ["--no-protect-spans"],
}


def levers(base, only=None):
    """Runs every lever (or those whose name starts with one of `only`) as
    `lever_<n>`, one after another, then scores each on the held-out pairs."""
    for n, (name, flags) in enumerate(LEVERS.items()):
        if only and not any(name.startswith(prefix) for prefix in only):
            continue
        print(f"\n=== lever {n}: {name}", flush=True)
        run(f"lever_{n}", [*base, *flags])
        results = json.load(open(os.path.join(corpus_dir(), "runs", "results.json")))
        results[f"lever_{n}"]["lever"] = name
        with open(os.path.join(corpus_dir(), "runs", "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    return 0


def keras_hub_baseline(minutes, vocabulary_size=4000, preset="tiny"):
    """keras-hub's layers and tokenizer at our `preset`'s size, trained for
    `minutes` with our learning-rate schedule (warm-up, inverse square
    root, peak 2e-3) and batches padded to their longest sentence."""
    import keras
    import keras_hub
    import numpy as np
    import sacrebleu
    import tensorflow as tf

    from keras_xformer.datasets import parallel_text

    train, validation, _ = parallel_text.load_tsv(
        os.path.join(corpus_dir(), "train.tsv"), split="hash")
    start = time.time()
    reserved = ["[PAD]", "[UNK]", "[START]", "[END]"]
    vocabs = [keras_hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(texts).batch(1000), vocabulary_size,
        reserved_tokens=reserved) for texts in train]
    source_tok, target_tok = [keras_hub.tokenizers.WordPieceTokenizer(vocabulary=v)
                              for v in vocabs]
    length = 64
    from keras_xformer.models.transformer import PRESETS
    size = PRESETS[preset]
    d, heads, ff, layers = (size["hidden_dim"], size["num_heads"], size["intermediate_dim"],
                            size["num_layers"])

    def encode(source, target, fixed=False):
        s = source_tok(source)
        t = target_tok(target)
        s = tf.concat([s[:, : length - 1], tf.fill([s.nrows(), 1], 3)], 1).to_tensor(
            shape=[None, length] if fixed else None)
        t = tf.concat([tf.fill([t.nrows(), 1], 2), t[:, : length - 1],
                       tf.fill([t.nrows(), 1], 3)], 1).to_tensor(
            shape=[None, length + 1] if fixed else None)
        return (s, t[:, :-1]), t[:, 1:]

    def dataset(pairs, shuffle):
        data = tf.data.Dataset.from_tensor_slices((list(pairs[0]), list(pairs[1])))
        if shuffle:
            data = data.shuffle(len(pairs[0]), seed=0)
        # Padded to each batch's longest sentence, not to 64.
        return data.batch(64).map(encode).prefetch(4)

    def build():
        src = keras.Input((None,), dtype="int32")
        tgt = keras.Input((None,), dtype="int32")
        x = keras_hub.layers.TokenAndPositionEmbedding(len(vocabs[0]), length, d,
                                                       mask_zero=True)(src)
        for _ in range(layers):
            x = keras_hub.layers.TransformerEncoder(ff, heads, dropout=0.1)(x)
        y = keras_hub.layers.TokenAndPositionEmbedding(len(vocabs[1]), length, d,
                                                       mask_zero=True)(tgt)
        for _ in range(layers):
            y = keras_hub.layers.TransformerDecoder(ff, heads, dropout=0.1)(y, x)
        return keras.Model([src, tgt], keras.layers.Dense(len(vocabs[1]))(y))

    from keras_xformer.losses import MaskedSparseCategoricalCrossentropy

    from keras_xformer.schedules import TransformerSchedule

    model = build()
    warmup = int(np.ceil(len(train[0]) / 64))
    schedule = TransformerSchedule(d, warmup_steps=warmup, scale=2e-3 * (d * warmup) ** 0.5)
    model.compile(keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.98, epsilon=1e-9),
                  MaskedSparseCategoricalCrossentropy(label_smoothing=0.1))

    class Deadline(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if time.time() - start > minutes * 60:
                self.model.stop_training = True

    model.fit(dataset(train, True), validation_data=dataset(validation, False), epochs=100,
              callbacks=[Deadline()], verbose=2)
    train_seconds = time.time() - start
    sources, references = held_out()

    @tf.function
    def step(s, t, i):
        # Fixed shapes (no retracing): the causal decoder's position i only
        # sees tokens 0..i of the padded target.
        logits = tf.gather(model([s, t], training=False), i, axis=1)
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    hypotheses = []
    batches = tf.data.Dataset.from_tensor_slices(sources).batch(256).map(
        lambda text: encode(text, text, fixed=True)[0][0])
    for s in batches:
        batch = int(tf.shape(s)[0])
        t = np.zeros((batch, length), "int32")
        t[:, 0] = 2
        for i in range(length - 1):
            t[:, i + 1] = step(s, tf.constant(t), tf.constant(i)).numpy()
        t = tf.constant(t)
        kept = tf.ragged.boolean_mask(
            t[:, 1:], tf.cumsum(tf.cast(t[:, 1:] == 3, tf.int32), 1) == 0)
        hypotheses += [x.decode("utf-8") if isinstance(x, bytes) else str(x)
                       for x in np.asarray(target_tok.detokenize(kept)).reshape(-1)]
    result = {"train_seconds": train_seconds, "parameters": model.count_params(),
              "preset": preset, "epochs": len(model.history.history.get("loss", [])),
              "greedy": {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
                         "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score}}
    for s, h, r in list(zip(sources, hypotheses, references))[:6]:
        print(f"  {s}  ->  {h}   (expected: {r})")
    print(json.dumps(result))
    record(f"keras_hub_{preset}", result)
    return 0


def latency(folder, repeats=30):
    """SavedModel ms per 6-word sentence: trained lengths against the longest."""
    import numpy as np
    import tensorflow as tf

    from keras_xformer import pipeline
    from keras_xformer.export import export_saved_model

    model, source, target, metrics = pipeline.load_translator(folder)
    train, _, _ = __import__("keras_xformer.datasets.parallel_text", fromlist=["x"]).load_tsv(
        os.path.join(corpus_dir(), "train.tsv"), split="hash")
    longest = pipeline.choose_lengths(source, target, train, percentile=100.0)[:2]
    trained = (metrics["source_length"], metrics["target_length"])
    sentences = [s for s in held_out()[0] if len(s.split()) == 6][:8]
    sentences = sentences or ["Open the file in a new window"]
    result = {}
    for name, (s, t) in (("percentile", trained), ("longest", longest)):
        path = os.path.join("/tmp", f"kx_latency_{name}")
        start = time.perf_counter()
        export_saved_model(path, model, source, target, s, t)
        export_seconds = time.perf_counter() - start
        serve = tf.saved_model.load(path).signatures["serving_default"]
        serve(text=tf.constant(sentences[:1]))  # compile
        times = []
        for _ in range(repeats):
            for sentence in sentences:
                begin = time.perf_counter()
                serve(text=tf.constant([sentence]))
                times.append(time.perf_counter() - begin)
        result[name] = {"lengths": [int(s), int(t)], "export_seconds": export_seconds,
                        "ms_per_sentence": 1000 * float(np.median(times))}
        print(name, result[name], flush=True)
    result["speedup"] = result["longest"]["ms_per_sentence"] / result["percentile"]["ms_per_sentence"]
    print(json.dumps(result))
    record("latency", result)
    return 0


def _run_and_own_splits(name):
    """A run's translator, its span protector, and its own validation and
    test pairs together (cut from train.tsv by `xformer train`, never
    `test.tsv`: choosing a decoding setting by them keeps held-out scores
    honest)."""
    from keras_xformer import pipeline

    out = os.path.join(corpus_dir(), "runs", name)
    model, source, target, metrics = pipeline.load_translator(out)
    spans = pipeline.load_span_protector(out)
    args = argparse.Namespace(data=os.path.join(corpus_dir(), "train.tsv"), seed=0,
                              held_out_pairs=metrics.get("held_out_pairs", 500),
                              train_size=None)
    _, validation, test = pipeline.load_corpus(args)
    own = (validation[0] + test[0], validation[1] + test[1])
    return model, source, target, metrics, spans, own


def penalty(name, penalties=(0.0, 0.6, 1.0, 1.4, 2.0), beams=(4,)):
    """Decoding settings on the run's own validation and test splits."""
    import sacrebleu

    from keras_xformer import pipeline

    model, source, target, metrics, spans, own = _run_and_own_splits(name)
    sources, references = own
    result = {}
    for beam in beams:
        for alpha in penalties:
            hypotheses = pipeline.translate_texts(
                model, source, target, sources, metrics["source_length"],
                metrics["target_length"], beam=beam, length_penalty=alpha, spans=spans)
            bleu = sacrebleu.corpus_bleu(hypotheses, [references])
            chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
            key = f"beam{beam}_lp{alpha:g}"
            result[key] = {"bleu": bleu.score, "chrf": chrf,
                           "length_ratio": bleu.sys_len / bleu.ref_len}
            print(f"{name}: beam {beam}, length penalty {alpha:g}: BLEU {bleu.score:.2f}, "
                  f"chrF {chrf:.2f}, length ratio {bleu.sys_len / bleu.ref_len:.3f} "
                  f"({len(references)} pairs of the run's own splits)", flush=True)
    record(f"penalty_{name}", result)
    return 0


def sentences(name):
    """Whole texts against sentence by sentence (`translate_texts`'s
    `split_sentences`), beam 4 at the folder's length penalty, on the run's
    own validation and test splits (which chose it) and on the held-out
    `test.tsv`; also on the texts of several sentences alone."""
    import sacrebleu

    from keras_xformer import pipeline
    from keras_xformer.text.sentences import split_sentences

    model, source, target, metrics, spans, own = _run_and_own_splits(name)
    result = {}
    for split_name, (sources, references) in (("own", own), ("held_out", held_out())):
        several = [i for i, n in enumerate(split_sentences(sources)[0].row_lengths().numpy())
                   if n > 1]
        for split in (False, True):
            start = time.perf_counter()
            hypotheses = pipeline.translate_texts(
                model, source, target, sources, metrics["source_length"],
                metrics["target_length"], beam=4, spans=spans,
                length_penalty=metrics.get("length_penalty", 0.6), split_sentences=split)
            seconds = time.perf_counter() - start
            bleu = sacrebleu.corpus_bleu(hypotheses, [references])
            chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
            subset = ([hypotheses[i] for i in several], [[references[i] for i in several]])
            key = f"{split_name}_{'split' if split else 'whole'}"
            result[key] = {
                "bleu": bleu.score, "chrf": chrf, "length_ratio": bleu.sys_len / bleu.ref_len,
                "pairs": len(references), "several_sentences": len(several),
                "several_bleu": sacrebleu.corpus_bleu(*subset).score,
                "several_chrf": sacrebleu.corpus_chrf(*subset).score, "seconds": seconds}
            r = result[key]
            print(f"{name} {split_name} ({len(references)} pairs, {len(several)} of several "
                  f"sentences), {'sentence by sentence' if split else 'whole texts'}: BLEU "
                  f"{r['bleu']:.2f}, chrF {r['chrf']:.2f}, length ratio {r['length_ratio']:.3f}; "
                  f"several-sentence texts BLEU {r['several_bleu']:.2f}, chrF "
                  f"{r['several_chrf']:.2f}; {seconds:.1f} s", flush=True)
    record(f"sentences_{name}", result)
    return 0


def stages(name, rounds=2):
    """Translation time of the held-out `test.tsv` with the self-attention
    caches growing in stages (the search's default) against one
    full-length cache (the search before), same weights and settings as
    `xformer translate` on the folder (beam 4, sentence by sentence), in
    turns after an untimed pass of each (which compiles every shape)."""
    from keras_xformer import pipeline
    from keras_xformer.decoding import search

    model, source, target, metrics, spans, _ = _run_and_own_splits(name)
    sources = held_out()[0]
    compiled, outputs, seconds = {}, {}, {}
    variants = (("staged", search._FIRST_STAGE), ("one cache", 10**9))
    saved = search._FIRST_STAGE
    try:
        for timed in [False] + [True] * rounds:
            for variant, first in variants:
                # Each variant keeps its own compiled searches.
                search._FIRST_STAGE = first
                search._COMPILED[model] = compiled.setdefault(variant, {})
                start = time.perf_counter()
                outputs[variant] = pipeline.translate_texts(
                    model, source, target, sources, metrics["source_length"],
                    metrics["target_length"], beam=4, spans=spans,
                    length_penalty=metrics.get("length_penalty", 0.6))
                if timed:
                    seconds.setdefault(variant, []).append(time.perf_counter() - start)
    finally:
        search._FIRST_STAGE = saved
    same = sum(a == b for a, b in zip(outputs["staged"], outputs["one cache"]))
    result = {"target_length": metrics["target_length"], "pairs": len(sources),
              "identical": same, "seconds": seconds,
              "speedup": min(seconds["one cache"]) / min(seconds["staged"])}
    print(f"{name}: {len(sources)} held-out texts, beam 4, target length "
          f"{metrics['target_length']} (stages {search._stages(metrics['target_length'])}): "
          f"staged {min(seconds['staged']):.2f} s, one cache {min(seconds['one cache']):.2f} s "
          f"(best of {rounds}), {result['speedup']:.2f}x; identical translations "
          f"{same}/{len(sources)}", flush=True)
    record(f"stages_{name}", result)
    return 0


def table():
    path = os.path.join(corpus_dir(), "runs", "results.json")
    results = json.load(open(path))
    print("| run | flags | preset | epochs | train s | BLEU beam 4 | chrF beam 4 | BLEU greedy | chrF greedy |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        if "greedy" not in r:
            continue
        b = r.get("beam4", {})
        print(f"| {name} | `{' '.join(r.get('flags', []))}` | {r.get('preset', '')} | "
              f"{r.get('epochs', '')} | {r.get('train_seconds', 0):.0f} | "
              f"{b.get('bleu', float('nan')):.2f} | {b.get('chrf', float('nan')):.2f} | "
              f"{r['greedy']['bleu']:.2f} | {r['greedy']['chrf']:.2f} |")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["run", "score", "keras_hub", "latency", "table",
                                         "levers", "penalty", "sentences", "stages"])
    parser.add_argument("name", nargs="?")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--preset", default="tiny", help="keras_hub: our preset's size")
    parser.add_argument("--penalties", type=float, nargs="+", default=[0.0, 0.6, 1.0, 1.4, 2.0],
                        help="penalty: length penalties to try")
    parser.add_argument("--beams", type=int, nargs="+", default=[4],
                        help="penalty: beam sizes to try (0: greedy)")
    parser.add_argument("--lever-epochs", type=int, default=4, help="levers: epochs per run")
    # Intermixed: `levers --epochs 4 NAME` must give NAME to `name`, not to
    # the flags passed through to `xformer train`.
    sys.path.insert(0, ROOT)
    if argv[:1] in (["run"], ["score"]) and len(argv) > 1:
        # Everything after NAME goes to `xformer train` as it is: parsed
        # here, its `--preset` would be taken by this script's own option
        # (the keras_hub mode's) and never reach the run.
        return (run if argv[0] == "run" else score)(argv[1], argv[2:])
    args, rest = parser.parse_known_intermixed_args(argv)
    if args.mode == "levers":
        # Fixed epochs, not a time budget: the machine's load then changes
        # the time a lever takes, not the training it gets.
        base = ["--epochs", str(args.lever_epochs), "--no-export", "--beam", "0",
                "--patience", "0"]
        return levers(base, [args.name] if args.name else None)
    if args.mode == "keras_hub":
        return keras_hub_baseline(args.minutes, preset=args.preset)
    if args.mode == "latency":
        return latency(args.name)
    if args.mode == "penalty":
        return penalty(args.name, args.penalties, args.beams)
    if args.mode == "sentences":
        return sentences(args.name)
    if args.mode == "stages":
        return stages(args.name)
    return table()


if __name__ == "__main__":
    sys.exit(main())
