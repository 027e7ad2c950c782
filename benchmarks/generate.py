"""Milliseconds per decoding step: our cached `generate` and exports against
CTranslate2 (float32 and int8), keras-hub and a naive loop, same weights
where the engines allow it, taken in turns within one process.

Candidates (greedy and beam 4, batch 1 and 8):

- ours: `Transformer.generate` with and without XLA; the same search
  behind a SavedModel (ids in, ids out, loaded with `tf.saved_model.load`);
  the TFLite file of `export_tflite`, float and dynamic int8 (one file per
  batch and method, as its signature fixes both); Keras'
  `model.quantize("int8")` (every
  projection, attention included, and the embeddings).
- CTranslate2: our weights exported with `export_ctranslate2`, float32 and
  int8, `intra_threads` equal to TensorFlow's.
- keras-hub: `BartSeq2SeqLM.generate` (its whole-model cached path; greedy
  and `BeamSampler(4)`, XLA on and off), and its `TransformerDecoder`
  layers driven by `GreedySampler` as its BART does (greedy only).
- naive: the tutorial's loop, a full forward pass per token (greedy only).
- before: the TFLite files (float32 and dynamic int8) as they were before
  session 18, when every beam-search file ran one step per loop iteration
  (`export_tflite` now runs 4 where the caches are large against the
  weights: beam b8 here), to measure that change in the same run; not
  counted as "ours". XLA paths did not change. (Earlier sessions' before
  rows: benchmarks/RESULTS.md.)

Sizes (random weights): width 256, 8 heads, feed-forward 1024, 4 encoder +
4 decoder layers, vocabulary 8000, source length 64, 64 new tokens; [END]
and [PAD] get a -1e4 output bias so every run makes all 64 tokens
(keras-hub's BART runs without stop tokens).

Each repeat times every candidate once, in turns, so drift hits all
alike; the table gives the median ms per step and the spread (min-max over
repeats), and ratios against CTranslate2 and keras-hub from the same run.

    flock /tmp/kx_cpu.lock python benchmarks/generate.py [--threads 2]
        [--batches 1 8] [--methods greedy beam] [--repeats 5]
"""

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
import types

import _common  # noqa: F401  (sets the backend and log level)

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=0,
                    help="intra-op threads for TensorFlow, TFLite and CTranslate2 "
                         "(0: TensorFlow's default, the number of cores)")
parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
parser.add_argument("--methods", nargs="+", default=["greedy", "beam"])
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--skip", nargs="*", default=[],
                    help="candidate name prefixes to leave out (e.g. naive tflite)")
parser.add_argument("--out", default="generate")
parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script")
ARGS = parser.parse_args()

import tensorflow as tf  # noqa: E402

if ARGS.threads:
    # Must precede any TensorFlow op.
    tf.config.threading.set_intra_op_parallelism_threads(ARGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

from keras_xformer.decoding.search import beam_search  # noqa: E402
from keras_xformer.decoding.search import greedy_search  # noqa: E402
from keras_xformer.export import tflite as tflite_module  # noqa: E402

VOCAB, WIDTH, HEADS, FF, LAYERS, SOURCE, NEW, BEAM = 8000, 256, 8, 1024, 4, 64, 64, 4
if ARGS.smoke:
    VOCAB, LAYERS, NEW = 500, 1, 6
THREADS = ARGS.threads or os.cpu_count()


def cpu_description():
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not flags:
                    flags = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
                    return f"{flags}; {' '.join(w for w in wanted if w in present)}"
    except OSError:
        pass
    return platform.processor()


def our_model(quantize=False):
    model = _common.decoding_model(VOCAB, WIDTH, HEADS, FF, LAYERS)
    if quantize:
        model.quantize("int8")
    return model


def search_fn(model, method):
    if method == "greedy":
        return lambda ids: greedy_search(model, ids, NEW)
    return lambda ids: beam_search(model, ids, NEW, BEAM, 0.6)


@contextlib.contextmanager
def as_before():
    """Exports TFLite files as before session 18: beam search one step per
    loop iteration at every size."""
    saved = tflite_module._UNROLL_MIN_CACHE_SHARE
    tflite_module._UNROLL_MIN_CACHE_SHARE = float("inf")
    try:
        yield
    finally:
        tflite_module._UNROLL_MIN_CACHE_SHARE = saved


def saved_model_candidate(model, method, directory):
    """The compiled search behind a SavedModel signature, ids to ids."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        tf.function(search_fn(model, method), jit_compile=True),
        input_signature=[tf.TensorSpec([None, SOURCE], tf.int32, name="source_ids")],
    )
    path = os.path.join(directory, f"saved_{method}")
    archive.write_out(path, verbose=False)
    loaded = tf.saved_model.load(path)
    return lambda source: loaded.serving_default(tf.constant(source)).numpy()


def tflite_candidate(model, quantization, method, batch, directory, before=False):
    """One file per (batch, method): the file's signature fixes both."""
    from ai_edge_litert.interpreter import Interpreter

    from keras_xformer.export import export_tflite

    path = os.path.join(directory, f"model_{quantization}_{method}_{batch}_{before}.tflite")
    with as_before() if before else contextlib.nullcontext():
        export_tflite(path, model, SOURCE, NEW, quantization=quantization,
                      batch_size=batch, method=method, beam_size=BEAM, length_penalty=0.6)
    interpreter = Interpreter(model_path=path, num_threads=THREADS)
    runner = interpreter.get_signature_runner()
    return lambda source: runner(source_ids=source)["target_ids"]


def ctranslate2_candidates(model, method, directory):
    import ctranslate2

    from keras_xformer.export import export_ctranslate2

    tokens = ["[PAD]", "[UNK]", "[START]", "[END]"] + [f"t{i}" for i in range(4, VOCAB)]
    tokenizer = types.SimpleNamespace(vocabulary=tokens)
    vocabulary = ["<blank>", "<unk>", "<s>", "</s>"] + tokens[4:]
    candidates = {}
    for quantization in ("float32", "int8"):
        path = os.path.join(directory, f"ct2_{quantization}")
        if not os.path.exists(path):
            export_ctranslate2(path, model, tokenizer, tokenizer, quantization=quantization)
        translator = ctranslate2.Translator(path, intra_threads=THREADS, inter_threads=1,
                                            compute_type=quantization)

        def run(source, translator=translator):
            # The exported model appends </s> (our encode_source's [END]).
            batch = [[vocabulary[i] for i in row] for row in source]
            results = translator.translate_batch(
                batch, beam_size=1 if method == "greedy" else BEAM,
                max_decoding_length=NEW, min_decoding_length=NEW,
                length_penalty=0.6, max_input_length=0)
            return results

        candidates[f"CTranslate2 {quantization}"] = run
    return candidates


def naive_candidate(model, jit_compile):
    """The tutorial's loop: a full forward pass on the padded prefix per token."""

    @tf.function(jit_compile=jit_compile)
    def step(source, prefix, index):
        logits = model((source, prefix), training=False)
        return tf.cast(tf.argmax(logits[:, index], -1), tf.int32)

    def run(source):
        prefix = np.zeros((len(source), NEW), "int32")
        prefix[:, 0] = model.start_token_id
        out = np.zeros((len(source), NEW), "int32")
        for i in range(NEW):
            out[:, i] = step(source, prefix, tf.constant(i)).numpy()
            if i + 1 < NEW:
                prefix[:, i + 1] = out[:, i]
        return out

    return run


class HubLayers:
    """keras-hub layers wired as its BART: cached decoder + GreedySampler."""

    def __init__(self):
        keras.utils.set_random_seed(0)
        self.source_embedding = keras_hub.layers.TokenAndPositionEmbedding(VOCAB, 256, WIDTH)
        self.target_embedding = keras_hub.layers.TokenAndPositionEmbedding(VOCAB, 256, WIDTH)
        self.encoders = [keras_hub.layers.TransformerEncoder(FF, HEADS, dropout=0.0)
                         for _ in range(LAYERS)]
        self.decoders = [keras_hub.layers.TransformerDecoder(FF, HEADS, dropout=0.0)
                         for _ in range(LAYERS)]
        self.output_dense = keras.layers.Dense(VOCAB)
        self.sampler = keras_hub.samplers.GreedySampler()
        source = np.ones((1, SOURCE), "int32")
        x = self.source_embedding(source)
        for layer in self.encoders:
            x = layer(x)
        y = self.target_embedding(source[:, :2])
        for layer in self.decoders:
            y = layer(y, x)
        self.output_dense(y)

    def generate_fn(self, jit_compile):
        head_dim = WIDTH // HEADS

        @tf.function(jit_compile=jit_compile)
        def generate(source):
            batch = tf.shape(source)[0]
            source_mask = source != 0
            x = self.source_embedding(source)
            for layer in self.encoders:
                x = layer(x, padding_mask=source_mask)
            cross = []
            first = self.target_embedding(tf.fill((batch, 1), 2))
            for layer in self.decoders:
                _, _, c = layer(
                    first, x, encoder_padding_mask=source_mask,
                    self_attention_cache=tf.zeros((batch, 2, NEW + 1, HEADS, head_dim)),
                    self_attention_cache_update_index=0,
                    cross_attention_cache=tf.zeros((batch, 2, SOURCE, HEADS, head_dim)),
                    cross_attention_cache_update_index=0,
                )
                cross.append(c)
            self_caches = tuple(tf.zeros((batch, 2, NEW + 1, HEADS, head_dim))
                                for _ in range(LAYERS))

            def next(prompt, cache, index):
                y = self.target_embedding(prompt[:, index - 1 : index], start_index=index - 1)
                new = []
                for layer, self_cache, cross_cache in zip(self.decoders, cache, cross):
                    y, self_cache, _ = layer(
                        y, x, encoder_padding_mask=source_mask,
                        self_attention_cache=self_cache,
                        self_attention_cache_update_index=index - 1,
                        cross_attention_cache=cross_cache,
                        cross_attention_cache_update_index=None,
                    )
                    new.append(self_cache)
                logits = self.output_dense(y)[:, 0]
                logits = logits + tf.where(tf.range(VOCAB)[None] == 3, -1e4, 0.0)
                return logits, None, tuple(new)

            prompt = tf.concat([tf.fill((batch, 1), 2), tf.zeros((batch, NEW), tf.int32)], 1)
            mask = tf.concat([tf.ones((batch, 1), bool), tf.zeros((batch, NEW), bool)], 1)
            return self.sampler(next, prompt, cache=self_caches, index=1, mask=mask)

        return lambda source: generate(source).numpy()


def hub_bart_candidate(backbone, method, jit_compile):
    """keras-hub's whole-model path, `BartSeq2SeqLM.generate`, run to
    `NEW` new tokens (no stop tokens). One `BartSeq2SeqLM` per mode over
    the same backbone, so taking turns never recompiles."""
    lm = keras_hub.models.BartSeq2SeqLM(backbone=backbone, preprocessor=None)
    sampler = (keras_hub.samplers.GreedySampler() if method == "greedy"
               else keras_hub.samplers.BeamSampler(num_beams=BEAM))
    lm.compile(sampler=sampler, jit_compile=jit_compile)

    def run(source):
        batch = len(source)
        decoder = np.zeros((batch, NEW + 1), "int32")
        decoder[:, 0] = 2
        inputs = {
            "encoder_token_ids": source,
            "encoder_padding_mask": source != 0,
            "decoder_token_ids": decoder,
            "decoder_padding_mask": decoder != 0,
        }
        return lm.generate(inputs, stop_token_ids=None)

    return run


def ratio(a, b):
    return a / b if a and b else float("nan")


def in_turns(candidates, source, repeats):
    """Median and spread of seconds per call, every candidate once per round."""
    for fn in candidates.values():
        fn(source)  # compile / warm up
        fn(source)
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn(source)
            times[name].append(time.perf_counter() - start)
    return times


def main():
    print(f"CPU: {cpu_description()}; {os.cpu_count()} cores; threads {THREADS}; "
          f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"keras-hub {keras_hub.__version__}", flush=True)
    skip = tuple(ARGS.skip)
    directory = tempfile.mkdtemp(prefix="kx_generate_")
    ours = our_model()
    quantized = None
    if not (skip and "ours quantize".startswith(skip)):
        try:
            quantized = our_model(quantize=True)
            quantized.generate(np.full((1, SOURCE), 5, "int32"), max_length=2)
        except Exception as error:  # noqa: BLE001 (reported, not hidden)
            print(f"ours quantize('int8'): not available here ({type(error).__name__}: "
                  f"{str(error)[:200]})")
            quantized = None
    hub = HubLayers()
    bart_backbone = keras_hub.models.BartBackbone(
        vocabulary_size=VOCAB, num_layers=LAYERS, num_heads=HEADS, hidden_dim=WIDTH,
        intermediate_dim=FF, dropout=0.0, max_sequence_length=max(SOURCE, NEW + 1))
    print(f"Parameters: ours {ours.count_params():,}, keras-hub BART "
          f"{bart_backbone.count_params():,} (tied output, learned positions)", flush=True)

    results, rows = {}, []
    for method in ARGS.methods:
        for batch in ARGS.batches:
            source = np.random.default_rng(batch).integers(4, VOCAB, (batch, SOURCE)).astype("int32")
            source[:, -1] = 3
            candidates = {}
            for jit in (True, False):
                candidates[f"ours generate XLA={jit}"] = (
                    lambda s, jit=jit: ours.generate(s, max_length=NEW, method=method,
                                                     beam_size=BEAM, jit_compile=jit))
            candidates["ours SavedModel"] = saved_model_candidate(ours, method, directory)
            if quantized is not None:
                candidates["ours Keras quantize(int8) XLA"] = (
                    lambda s: quantized.generate(s, max_length=NEW, method=method,
                                                 beam_size=BEAM))
            for q in (None, "dynamic_int8"):
                name = f"ours TFLite {q or 'float32'}"
                if not (skip and name.startswith(skip)):
                    candidates[name] = tflite_candidate(ours, q, method, batch, directory)
            # Only files that session 18 changed (beam search at batch 8 here).
            if (not (skip and "before".startswith(skip)) and method == "beam"
                    and tflite_module._beam_unroll(ours, batch * BEAM, NEW) > 1):
                for q in (None, "dynamic_int8"):
                    candidates[f"before: TFLite {q or 'float32'}"] = tflite_candidate(
                        ours, q, method, batch, directory, before=True)
            candidates.update(ctranslate2_candidates(ours, method, directory))
            for jit in (True, False):
                candidates[f"keras-hub BART generate XLA={jit}"] = hub_bart_candidate(
                    bart_backbone, method, jit)
                if method == "greedy":
                    candidates[f"keras-hub layers+sampler XLA={jit}"] = hub.generate_fn(jit)
                    candidates[f"naive loop XLA={jit}"] = naive_candidate(ours, jit)
            candidates = {k: v for k, v in candidates.items()
                          if not (skip and k.startswith(skip))}
            check = ours.generate(source, max_length=NEW, method=method, beam_size=BEAM)
            assert (check != 0).all(), "the benchmark must make all 64 tokens"
            for before, now in (("before: TFLite float32", "ours TFLite float32"),
                                ("before: TFLite dynamic_int8", "ours TFLite dynamic_int8")):
                if before in candidates and now in candidates:
                    same = np.mean(candidates[before](source) == candidates[now](source))
                    print(f"{method}, batch {batch}: {now} ids equal those of {before}: "
                          f"{same:.2%}", flush=True)
            if "ours TFLite float32" in candidates:
                same = np.mean(candidates["ours TFLite float32"](source) == check)
                print(f"{method}, batch {batch}: TFLite float32 ids equal generate's: "
                      f"{same:.2%}", flush=True)
            print(f"\n{method}, batch {batch}: {len(candidates)} candidates, "
                  f"{ARGS.repeats} rounds", flush=True)
            times = in_turns(candidates, source, ARGS.repeats)
            per_step = {k: [1e3 * t / NEW for t in v] for k, v in times.items()}
            medians = {k: statistics.median(v) for k, v in per_step.items()}

            def best(prefix):
                found = [v for k, v in medians.items() if k.startswith(prefix)]
                return min(found) if found else None

            summary = {
                "ours float best": min((v for k, v in medians.items()
                                        if k.startswith("ours") and "int8" not in k),
                                       default=None),
                "ours int8 best": min(
                    [v for k, v in medians.items() if k.startswith("ours") and "int8" in k],
                    default=None),
                "CTranslate2 float32": medians.get("CTranslate2 float32"),
                "CTranslate2 int8": medians.get("CTranslate2 int8"),
                "keras-hub best": best("keras-hub"),
            }
            naive = best("naive")
            # Keyed and shaped as benchmarks/run.py reads it: "batch=N method".
            results[f"batch={batch} {method}"] = {
                "ms_per_token": medians, "ms_per_step_all": per_step, "summary": summary,
                "speedup_vs_naive": ratio(naive, summary["ours float best"]),
                "speedup_vs_keras_hub": ratio(summary["keras-hub best"], summary["ours float best"]),
                "threads": THREADS, "cpu": cpu_description()}
            for name in sorted(medians, key=medians.get):
                spread = f"{min(per_step[name]):.2f}-{max(per_step[name]):.2f}"
                rows.append((method, batch, name, f"{medians[name]:.2f}", spread))
            ratios = []
            if summary["CTranslate2 float32"] and summary["ours float best"]:
                ratios.append(f"ours float / CT2 float32 "
                              f"{summary['ours float best'] / summary['CTranslate2 float32']:.2f}x")
            if summary["CTranslate2 int8"] and summary["ours int8 best"]:
                ratios.append(f"ours int8 / CT2 int8 "
                              f"{summary['ours int8 best'] / summary['CTranslate2 int8']:.2f}x")
            if summary["keras-hub best"] and summary["ours float best"]:
                ratios.append(f"keras-hub / ours "
                              f"{summary['keras-hub best'] / summary['ours float best']:.2f}x")
            rows.append((method, batch, "ratios (best of each)", "; ".join(ratios), ""))
            print("\n".join("  ".join(map(str, r)) for r in rows[-len(medians) - 1:]), flush=True)

    _common.print_table(
        f"Decoding: source {SOURCE}, {NEW} new tokens, width {WIDTH}, {LAYERS}+{LAYERS} "
        f"layers, vocabulary {VOCAB}, threads {THREADS} (ms per step, median of "
        f"{ARGS.repeats} rounds in turns; spread min-max)",
        ("method", "batch", "candidate", "ms/step", "spread"), rows)
    print("saved", _common.save_results(ARGS.out, results))


if __name__ == "__main__":
    sys.exit(main())
