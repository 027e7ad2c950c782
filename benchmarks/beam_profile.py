"""Where a beam step's time goes on XLA:CPU (issue 14): the beam search of
`keras_xformer.decoding.search` with one piece changed at a time, beside
greedy search on as many rows as the beams (batch * 4), all taken in turns
in one process at the sizes of benchmarks/generate.py (4+4 layers, width
256, vocabulary 8000, source 64, 64 new tokens), plus the pieces alone in
an XLA while-loop of 64 steps.

Variants (those marked "wrong" leave a piece out, for timing only; the
others are checked to give `generate`'s sequences; "ours" is `generate`,
which after issue 14 is `top_k flat, cache rows`):

- `top_k flat`: one `top_k` over (batch, k * vocab), as before issue 14;
  `two-stage`: per beam over the vocabulary, then over the k * k survivors.
- `cache take`: the caches reordered after every step (`ops.take` of the
  parents' rows), as before issue 14; `cache rows`: caches in place, the
  attention reading each beam's positions through `cache_rows`.
- `no log_softmax`, `no cache reorder`: that piece left out.
- `before: cross caches per beam`: the source's cross-attention keys/values
  repeated for each of its k beams, as `generate` did until the attention
  learnt to serve k query rows from one cache row (`MultiHeadAttention`'s
  reused `cache`).
- `before: stacked caches` (beam and greedy): keras-hub's stacked
  `(rows, 2, T, heads, dim)` caches, whose one-query attention is a broadcast
  multiply and sums; `generate` now keeps split heads-first `(keys, values)`
  caches, read with batched matmuls.

    flock /tmp/kx_cpu.lock python benchmarks/beam_profile.py --threads 1
        [--only "beam ours" "beam before: cross"] [--int8]

`--int8`: the model after Keras' `quantize("int8")` (every projection).
"""

import argparse
import statistics
import sys
import time

import _common  # noqa: F401  (backend, log level)

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--only", nargs="*", default=[], help="variant name prefixes to run")
parser.add_argument("--int8", action="store_true", help='after model.quantize("int8")')
ARGS = parser.parse_args()

import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(ARGS.threads)
tf.config.threading.set_inter_op_parallelism_threads(1)

import numpy as np  # noqa: E402
from keras import ops  # noqa: E402
from keras import tree  # noqa: E402

from keras_xformer.decoding import search as S  # noqa: E402

VOCAB, WIDTH, HEADS, FF, LAYERS, SOURCE, NEW, BEAM = 8000, 256, 8, 1024, 4, 64, 64, 4


def flat_select(candidates, k, vocabulary):
    """The search before issue 14: one top_k over (batch, k * vocab)."""
    batch = ops.shape(candidates)[0]
    scores, flat_index = ops.top_k(ops.reshape(candidates, (batch, -1)), k)
    return scores, flat_index // vocabulary, ops.cast(flat_index % vocabulary, "int32")


def two_stage_select(candidates, k):
    """The same choice as `flat_select` (ties included: `top_k` puts equal
    values in index order, which the beam-major survivors keep): the k best
    tokens of each beam, then the k best of those k * k."""
    batch = ops.shape(candidates)[0]
    per_beam, tokens = ops.top_k(candidates, k)  # (batch, k, k)
    scores, flat = ops.top_k(ops.reshape(per_beam, (batch, k * k)), k)
    next_ids = ops.take_along_axis(ops.reshape(tokens, (batch, k * k)), flat, axis=1)
    return scores, flat // k, ops.cast(next_ids, "int32")


def stacked_caches(model, batch, max_length):
    """Self-attention caches in keras-hub's stacked layout (batch, 2, T, heads,
    dim), as `generate` used before its split heads-first caches."""
    head_dim = model.hidden_dim // model.num_heads
    shape = (batch, 2, max_length, model.num_heads, head_dim)
    return [ops.zeros(shape) for _ in range(model.num_layers)]


def variant_beam_search(model, source_ids, max_length, k, length_penalty,
                        select="flat", log_softmax=True, cache="rows", layout="split",
                        cross_per_beam=False):
    """`beam_search` with one piece swapped. `select="flat", cache="take",
    cross_per_beam=True` is the search before issue 14; `layout="stacked"`
    the caches before the split heads-first layout; `cross_per_beam` the
    cross-attention caches before the beams shared them."""
    encoder_outputs, source_mask = model.encode(source_ids, training=False)
    batch = ops.shape(source_ids)[0]
    cross_caches = model.decoder.compute_cross_attention_caches(encoder_outputs, layout=layout)
    if cross_per_beam:
        cross_caches = [tree.map_structure(lambda t: ops.repeat(t, k, axis=0), c)
                        for c in cross_caches]
        source_mask = ops.repeat(source_mask, k, axis=0)
    vocabulary = model.target_vocabulary_size
    pad_only = ops.where(ops.arange(vocabulary) == 0, 0.0, S._NEG)
    batch_offsets = ops.expand_dims(ops.arange(batch) * k, 1)
    own_rows = ops.expand_dims(ops.arange(batch * k, dtype="int32"), 1)

    def cond(i, tokens, sequences, scores, lengths, done, cache_rows, caches):
        return ops.logical_and(i < max_length, ops.logical_not(ops.all(done)))

    def body(i, tokens, sequences, scores, lengths, done, cache_rows, caches):
        if cache == "rows":
            cache_rows = ops.slice_update(cache_rows, (0, i), own_rows)
            logits, caches = model.decode_step(tokens, i, caches, cross_caches, source_mask,
                                               cache_rows=cache_rows)
        else:
            logits, caches = model.decode_step(tokens, i, caches, cross_caches, source_mask)
        if log_softmax:
            logits = ops.log_softmax(logits, axis=-1)
        log_probs = ops.reshape(logits, (batch, k, vocabulary))
        log_probs = ops.where(ops.expand_dims(done, -1), pad_only, log_probs)
        candidates = ops.expand_dims(scores, -1) + log_probs
        if select == "flat":
            scores, beam, next_ids = flat_select(candidates, k, vocabulary)
        else:
            scores, beam, next_ids = two_stage_select(candidates, k)
        sequences = ops.take_along_axis(sequences, ops.expand_dims(beam, -1), axis=1)
        sequences = ops.slice_update(sequences, (0, 0, i), ops.expand_dims(next_ids, -1))
        was_done = ops.take_along_axis(done, beam, axis=1)
        lengths = ops.take_along_axis(lengths, beam, axis=1) + ops.cast(
            ops.logical_not(was_done), "int32")
        done = was_done | (next_ids == model.end_token_id) | (next_ids == 0)
        parents = ops.reshape(batch_offsets + beam, (-1,))
        if cache == "take":
            caches = [tree.map_structure(lambda t: ops.take(t, parents, axis=0), c)
                      for c in caches]
        elif cache == "rows":
            cache_rows = ops.take(cache_rows, parents, axis=0)
        return (i + 1, ops.reshape(next_ids, (-1, 1)), sequences, scores, lengths, done,
                cache_rows, caches)

    first_beam_only = ops.where(ops.arange(k) == 0, 0.0, S._NEG)
    loop_vars = (
        ops.convert_to_tensor(0, "int32"),
        ops.full((batch * k, 1), model.start_token_id, "int32"),
        ops.zeros((batch, k, max_length), "int32"),
        ops.tile(ops.expand_dims(first_beam_only, 0), (batch, 1)),
        ops.zeros((batch, k), "int32"),
        ops.zeros((batch, k), "bool"),
        ops.zeros((batch * k, max_length), "int32"),
        (S._empty_self_attention_caches(model, batch * k, max_length) if layout == "split"
         else stacked_caches(model, batch * k, max_length)),
    )
    _, _, sequences, scores, lengths, _, _, _ = ops.while_loop(cond, body, loop_vars)
    penalty = ops.power((5.0 + ops.cast(lengths, "float32")) / 6.0, length_penalty)
    best = ops.argmax(scores / penalty, axis=-1)
    return ops.take_along_axis(sequences, ops.reshape(best, (-1, 1, 1)), axis=1)[:, 0]


def stacked_greedy_search(model, source_ids, max_length):
    """`greedy_search` with keras-hub's stacked caches (before the split
    heads-first layout)."""
    encoder_outputs, source_mask = model.encode(source_ids, training=False)
    cross_caches = model.decoder.compute_cross_attention_caches(encoder_outputs)
    batch = ops.shape(source_ids)[0]

    def body(i, tokens, outputs, done, caches):
        logits, caches = model.decode_step(tokens, i, caches, cross_caches, source_mask)
        next_ids = ops.where(done, 0, S._argmax(logits))
        outputs = ops.slice_update(outputs, (0, i), ops.expand_dims(next_ids, 1))
        done = done | (next_ids == model.end_token_id) | (next_ids == 0)
        return i + 1, ops.expand_dims(next_ids, 1), outputs, done, caches

    loop_vars = (
        ops.convert_to_tensor(0, "int32"),
        ops.full((batch, 1), model.start_token_id, "int32"),
        ops.zeros((batch, max_length), "int32"),
        ops.zeros((batch,), "bool"),
        stacked_caches(model, batch, max_length),
    )
    return ops.while_loop(
        lambda i, t, o, done, c: ops.logical_and(i < max_length,
                                                 ops.logical_not(ops.all(done))),
        body, loop_vars)[2]


def without_attention_math(which, fn):
    """`fn` (a search with cross caches per beam: one query row per cache
    row) traced with the single-query attention of the decoder's
    self- (`which="self"`), cross- (`"cross"`) or both attentions replaced
    by the first value row (wrong results: the cost of that math), in
    either cache layout."""
    from keras_xformer.layers import attention

    originals = {
        "scaled_dot_product_attention": attention.scaled_dot_product_attention,
        "_heads_first_attention": attention._heads_first_attention,
    }
    calls = [0]

    def patch(name):
        original = originals[name]
        heads_first = name == "_heads_first_attention"

        def patched(query, key, value, mask=None, dropout=None, training=None):
            if query.shape[1] != 1:
                return original(query, key, value, mask, dropout, training)
            calls[0] += 1
            kind = "self" if calls[0] % 2 == 1 else "cross"
            if which not in ("both", kind):
                return original(query, key, value, mask, dropout, training)
            length = key.shape[2 if heads_first else 1]
            weights = ops.zeros((query.shape[0], query.shape[2], 1, length))
            first = (ops.transpose(value[:, :, :1], (0, 2, 1, 3)) if heads_first
                     else value[:, :1])
            return first + 0.0 * query, weights

        return patched

    def run():
        calls[0] = 0
        for name in originals:
            setattr(attention, name, patch(name))
        try:
            return fn()
        finally:
            for name, original in originals.items():
                setattr(attention, name, original)

    return run


def pieces(batch, k):
    """The beam step's selection and cache pieces alone, 64 steps in XLA."""
    rows = batch * k
    logits = tf.random.normal((rows, VOCAB))
    cache_shape = (rows, 2, NEW, HEADS, WIDTH // HEADS)

    def loop(step, state):
        @tf.function(jit_compile=True)
        def run(x, state):
            def body(i, x, state):
                return i + 1, x + 1e-3, step(x, state)
            return tf.while_loop(lambda i, x, s: i < NEW, body, (0, x, state))[2]
        return lambda: tf.nest.map_structure(lambda t: t.numpy(), run(logits, state))

    scores0 = tf.zeros((batch, k))

    def top_flat(x, s):
        c = tf.reshape(x, (batch, k, VOCAB)) + s[..., None]
        return flat_select(c, k, VOCAB)[0]

    def top_two(x, s):
        c = tf.reshape(x, (batch, k, VOCAB)) + s[..., None]
        return two_stage_select(c, k)[0]

    def lsm(x, s):
        return s + tf.reduce_max(tf.reshape(tf.nn.log_softmax(x), (batch, k, VOCAB)), -1)

    caches0 = [tf.random.normal(cache_shape) for _ in range(LAYERS)]
    perm = tf.constant(np.random.default_rng(0).integers(0, rows, rows), tf.int32)

    def take(x, caches):
        shift = tf.cast(x[0, 0] > 100, tf.int32)  # data-dependent, never true
        r = (perm + shift) % rows
        return [tf.gather(c, r, axis=0) for c in caches]

    return {
        f"piece: top_k flat ({batch}, {k * VOCAB})": loop(top_flat, scores0),
        f"piece: top_k two-stage ({batch}, {k}, {VOCAB})": loop(top_two, scores0),
        f"piece: log_softmax ({rows}, {VOCAB})": loop(lsm, scores0),
        f"piece: cache take x{LAYERS} {cache_shape}": loop(take, caches0),
    }


def main():
    model = _common.decoding_model(VOCAB, WIDTH, HEADS, FF, LAYERS)
    if ARGS.int8:
        model.quantize("int8")
    print(f"threads {ARGS.threads}, TensorFlow {tf.__version__}"
          f"{', int8 weights' if ARGS.int8 else ''}", flush=True)

    for batch in ARGS.batches:
        source = np.random.default_rng(batch).integers(4, VOCAB, (batch, SOURCE)).astype("int32")
        source[:, -1] = 3
        wide = np.repeat(source, BEAM, axis=0)
        variants = {
            "beam ours (generate)": lambda: model.generate(
                source, max_length=NEW, method="beam", beam_size=BEAM),
            "beam before: cross caches per beam": (lambda: variant_beam_search(
                model, source, NEW, BEAM, 0.6, cross_per_beam=True), True),
            "beam before: top_k flat, cache take": (lambda: variant_beam_search(
                model, source, NEW, BEAM, 0.6, select="flat", cache="take",
                cross_per_beam=True), True),
            "beam before: stacked caches": (lambda: variant_beam_search(
                model, source, NEW, BEAM, 0.6, layout="stacked", cross_per_beam=True), True),
            "beam top_k two-stage, cache rows": (lambda: variant_beam_search(
                model, source, NEW, BEAM, 0.6, select="two-stage"), True),
            "beam top_k flat, cache take": (lambda: variant_beam_search(
                model, source, NEW, BEAM, 0.6, cache="take"), True),
            "beam no cache reorder (wrong)": (lambda: variant_beam_search(
                model, source, NEW, BEAM, 0.6, cache="none"), True),
            "beam no log_softmax (wrong)": (lambda: variant_beam_search(
                model, source, NEW, BEAM, 0.6, log_softmax=False), True),
            f"greedy batch {batch}": lambda: model.generate(source, max_length=NEW),
            f"greedy batch {batch * BEAM} (rows of the beams)": lambda: model.generate(
                wide, max_length=NEW),
            f"greedy batch {batch} before: stacked caches": (lambda: stacked_greedy_search(
                model, source, NEW), True),
            f"greedy batch {batch * BEAM} before: stacked caches": (
                lambda: stacked_greedy_search(model, wide, NEW), True),
            "beam no self-attention math (wrong)": (without_attention_math(
                "self", lambda: variant_beam_search(model, source, NEW, BEAM, 0.6,
                                             cross_per_beam=True)), True),
            "beam no cross-attention math (wrong)": (without_attention_math(
                "cross", lambda: variant_beam_search(model, source, NEW, BEAM, 0.6,
                                             cross_per_beam=True)), True),
            "beam no attention math (wrong)": (without_attention_math(
                "both", lambda: variant_beam_search(model, source, NEW, BEAM, 0.6,
                                             cross_per_beam=True)), True),
            # Per step with caches half as long: how much of a step grows
            # with the cache length (attention over all max_length slots).
            f"beam, {NEW // 2} steps, caches of {NEW // 2}": lambda: model.generate(
                source, max_length=NEW // 2, method="beam", beam_size=BEAM),
            f"greedy batch {batch * BEAM}, {NEW // 2} steps, caches of {NEW // 2}": (
                lambda: model.generate(wide, max_length=NEW // 2)),
        }
        variants.update(pieces(batch, BEAM))
        fns = {}
        for name, v in variants.items():
            if ARGS.only and not name.startswith(tuple(ARGS.only)):
                continue
            if isinstance(v, tuple):
                fn = tf.function(lambda ids, v=v[0]: v(), jit_compile=True)
                fns[name] = lambda fn=fn: fn(tf.constant(0)).numpy()
            else:
                fns[name] = v
        ref = model.generate(source, max_length=NEW, method="beam", beam_size=BEAM)
        greedy_refs = {f"greedy batch {batch} ": model.generate(source, max_length=NEW),
                       f"greedy batch {batch * BEAM} ": model.generate(wide, max_length=NEW)}
        for name in fns:
            if name.startswith("beam") and "wrong" not in name and "steps" not in name:
                # Same results as `generate`, before and after the change.
                if ARGS.int8:
                    # int8 products summed in another order can flip a
                    # near-tie of random weights: report, do not assert.
                    print(f"  {name}: {np.mean(fns[name]() == ref):.2%} of generate's ids",
                          flush=True)
                else:
                    np.testing.assert_array_equal(fns[name](), ref)
            if name.endswith("before: stacked caches") and name.startswith("greedy"):
                expected = [v for p, v in greedy_refs.items() if name.startswith(p)][0]
                np.testing.assert_array_equal(fns[name](), expected)
        for fn in fns.values():
            fn()
            fn()
        times = {name: [] for name in fns}
        for _ in range(ARGS.repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                steps = NEW // 2 if f"{NEW // 2} steps" in name else NEW
                times[name].append(1e3 * (time.perf_counter() - start) / steps)
        print(f"\nbatch {batch}, beam {BEAM}, threads {ARGS.threads}: ms per step, "
              f"median of {ARGS.repeats} rounds in turns (min-max)", flush=True)
        for name, t in times.items():
            print(f"  {name:55s} {statistics.median(t):7.3f}  ({min(t):.3f}-{max(t):.3f})",
                  flush=True)


if __name__ == "__main__":
    sys.exit(main())
