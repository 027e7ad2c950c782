"""Greedy and beam search over a `Transformer`, with key/value caches.

Both searches are written with `keras.ops` and a `while_loop` so they trace
into one graph: on TensorFlow the whole search is one `tf.function`
(XLA-compiled when asked), on JAX one `jax.jit` program, traced once per
(batch, source length, max_length, method, beam settings), cached on the
model and reused. On PyTorch the loop runs eagerly without autograd.
"""

import weakref

import keras
import numpy as np
from keras import ops

# A finite stand-in for -inf: `score + _NEG` stays finite and comparable,
# where `-inf - -inf` would be NaN.
_NEG = -1e9

_COMPILED = weakref.WeakKeyDictionary()


# The self-attention caches grow in stages: the first loop decodes
# positions [0, 32) with 32-slot caches, the next [32, 64) with 64, and so
# on up to `max_length`. Every step reads its whole cache (static shapes
# for XLA and TFLite), so a full-length cache made every step cost what the
# last one does; a translation that ends early now never pays for the slots
# it does not reach (benchmarks/RESULTS.md, "staged caches").
_FIRST_STAGE = 32


# At most this many loops when the stages grow by a fixed step.
_MAX_STEPPED_STAGES = 8


def _stages(max_length, step=None):
    """The cache length of each decoding loop: 32, 64, 128, ... then
    `max_length`, the last stage at least half again as long as the one
    before it (67 gives 32 and 67, not 32, 64 and 67: a loop for three
    positions would cost a compilation and save nothing).

    With `step`: every `step` positions instead (16 gives 16, 32, 48, 64
    for 64), the step raised to a multiple of itself where that would make
    more than `_MAX_STEPPED_STAGES` loops, and a last stage shorter than half
    a step merged into the one before. TFLite files use this: each step
    there copies its whole caches (see `export_tflite`), so shorter caches
    pay where XLA's in-place loops gain little and compile once per loop."""
    if step is not None:
        step *= max(1, -(-max_length // (step * _MAX_STEPPED_STAGES)))
        stages = list(range(step, max_length, step))
        if stages and max_length - stages[-1] < step / 2:
            stages.pop()
        return stages + [max_length]
    stages, length = [], _FIRST_STAGE
    while length * 3 < max_length * 2:
        stages.append(length)
        length *= 2
    return stages + [max_length]


def _grow(tensors, length, axis):
    """Zero-pads every tensor of a nested structure along `axis` to `length`."""
    def pad(t):
        widths = [(0, 0)] * len(t.shape)
        widths[axis] = (0, length - t.shape[axis])
        return ops.pad(t, widths)

    return keras.tree.map_structure(pad, tensors)


def _staged_while_loop(body, state, stages, done_index, grown_axes, unroll=1):
    """`ops.while_loop(body, state)` from step `state[0]` until the last of
    `stages` (`_stages(max_length)`) or until every row is done
    (`state[done_index]`), one loop per stage: before each, the loop
    variables at the indices of `grown_axes` (the caches, made at the first
    stage's length) are zero-padded along their axis to the stage's
    length.

    `unroll`: each loop iteration runs `body` that many times (a stage's
    last `length % unroll` steps run one at a time, in a loop of their own;
    the stages' lengths count from step 0, where both searches start).
    Steps taken after every row is done, inside an iteration, change
    nothing: a done row already steps while the others finish."""
    def unrolled(*values):
        for _ in range(unroll):
            values = body(*values)
        return values

    start = 0
    for end in stages:
        state = tuple(_grow(value, end, grown_axes[index]) if index in grown_axes else value
                      for index, value in enumerate(state))
        # Whole iterations from `start` up to `split`, then single steps.
        split = end - (end - start) % unroll
        loops = [(split, unrolled if unroll > 1 else body)]
        if split < end:
            loops.append((end, body))
        for stop, step in loops:
            if stop > start:
                def cond(*values, stop=stop):
                    return ops.logical_and(values[0] < stop,
                                           ops.logical_not(ops.all(values[done_index])))

                state = ops.while_loop(cond, step, state)
        start = end
    return state


def _empty_self_attention_caches(model, batch, max_length):
    """Split (keys, values) caches, heads first: a one-token step then reads
    them with batched matmuls in place (see `MultiHeadAttention`'s
    `cache`)."""
    head_dim = model.hidden_dim // model.num_heads
    shape = (batch, model.num_heads, max_length, head_dim)
    return [
        (ops.zeros(shape, model.compute_dtype), ops.zeros(shape, model.compute_dtype))
        for _ in range(model.num_layers)
    ]


def _argmax(logits):
    """Index of the largest logit (the first one on ties)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # Plain ARG_MAX: `keras.ops.argmax` adds a negative-zero fix-up with
        # BitwiseAnd, which TFLite has no builtin for, on every step.
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    return ops.cast(ops.argmax(logits, axis=-1), "int32")


def greedy_search(model, source_ids, max_length, stage_step=None, unroll=1):
    """Argmax decoding; see `Transformer.generate`. Returns `(batch,
    max_length)` int32 ids. `stage_step`: see `_stages`; `unroll`: steps
    per loop iteration, see `_staged_while_loop` (`export_tflite` keeps 1:
    in a TFLite file greedy search has no gather whose result a cache write
    could update in place, and unrolled it was slower; see `beam_search`)."""
    encoder_outputs, source_mask = model.encode(source_ids, training=False)
    cross_caches = model.decoder.compute_cross_attention_caches(
        encoder_outputs, layout="split"
    )
    batch = ops.shape(source_ids)[0]
    stages = _stages(max_length, stage_step)

    def body(i, tokens, outputs, done, caches):
        logits, caches = model.decode_step(tokens, i, caches, cross_caches, source_mask)
        next_ids = ops.where(done, 0, _argmax(logits))
        outputs = ops.slice_update(outputs, (0, i), ops.expand_dims(next_ids, 1))
        # A [PAD] ends a sequence as [END] does: everything after it would
        # read as padding.
        done = done | (next_ids == model.end_token_id) | (next_ids == 0)
        return i + 1, ops.expand_dims(next_ids, 1), outputs, done, caches

    state = (
        ops.convert_to_tensor(0, "int32"),
        ops.full((batch, 1), model.start_token_id, "int32"),
        ops.zeros((batch, max_length), "int32"),
        ops.zeros((batch,), "bool"),
        _empty_self_attention_caches(model, batch, stages[0]),
    )
    return _staged_while_loop(body, state, stages, done_index=3, grown_axes={4: 2},
                              unroll=unroll)[2]


# `_top_k` reads a vocabulary this long or longer in blocks of this many.
_TOP_K_MIN_LENGTH = 1024
_TOP_K_BLOCK = 32


def _top_k(x, k, block=None):
    """`ops.top_k(x, k)` over the last axis of a `(rows, n)` tensor, the
    same values and indices (ties to the lower index where top_k breaks
    them so), in three small steps instead of one large one: the maximum
    of every `block` consecutive values, the k best blocks (put back in
    index order), then a top_k over those k * block values. Exact: a block
    outside the k best has k blocks ahead of it whose maxima are at least
    its own, tying only at lower indices, so k values rank ahead of each of
    its values. Written by hand because both runtimes' TopK walk the whole
    row keeping a sorted k: over (32, 8000) with k = 4, XLA:CPU 401 ->
    85 us, TFLite 324 -> 115 us (`benchmarks/top_k.py`; RESULTS.md,
    session 16), where TopK was 5.5% of a TFLite int8 beam b8 step.
    Shorter rows (and unknown lengths) take `ops.top_k` as it is."""
    n = x.shape[-1]
    block = block or _TOP_K_BLOCK
    if n is None or n < max(_TOP_K_MIN_LENGTH, 2 * k * block):
        return ops.top_k(x, k)
    blocks = -(-n // block)
    if blocks * block != n:
        # -inf after the last value: it ties only with -inf values, at
        # higher indices, so it is never chosen over one of them.
        x = ops.pad(x, ((0, 0), (0, blocks * block - n)), constant_values=float("-inf"))
    grouped = ops.reshape(x, (-1, blocks, block))
    _, best = ops.top_k(ops.max(grouped, axis=-1), k)
    best = -ops.top_k(-ops.cast(best, "int32"), k)[0]  # ascending block order
    candidates = _take_rows(grouped, best)
    values, positions = ops.top_k(ops.reshape(candidates, (-1, k * block)), k)
    positions = ops.cast(positions, "int32")
    ids = _take_rows(best, positions // block) * block + positions % block
    return values, ids


def _take_rows(x, indices):
    """`x[r, indices[r, j]]` for `(rows, n, ...)` x and `(rows, m)` indices.
    On TensorFlow a batched GATHER: `ops.take_along_axis` there transposes
    all of x first (a copy of the whole vocabulary row in `_top_k`)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.gather(x, indices, axis=1, batch_dims=1)
    if len(x.shape) == 3:
        indices = ops.expand_dims(indices, -1)
    return ops.take_along_axis(x, indices, axis=1)


def _select_two_stage(logits, scores, done, batch, k):
    """The k best (beam, token) continuations of each source, from
    `(batch * k, vocabulary)` logits, `(batch, k)` beam scores and done
    flags: `(scores, beam, token ids)`, each `(batch, k)`.

    A beam's log-probabilities are its logits less one log-sum-exp, the
    same order, so its k best tokens are the k largest logits: a top_k per
    beam (`_top_k`), then one over the k * k survivors plus their beams' scores. The
    full log_softmax, the done mask and the score sum over all k *
    vocabulary candidates are gone (TFLite int8 beam b1 0.92 -> 0.79 ms a
    step, XLA within its spreads: benchmarks/RESULTS.md, session 14). Ties break as one
    top_k over all candidates would (where top_k keeps the order of equal
    values, as on TensorFlow and JAX): lower beam, then lower id. A finished
    beam offers [PAD] alone, at no cost, as before."""
    top_logits, top_ids = _top_k(logits, k)
    log_probs = ops.reshape(top_logits - ops.logsumexp(logits, axis=-1, keepdims=True), (batch, k, k))
    top_ids = ops.reshape(ops.cast(top_ids, "int32"), (batch, k, k))
    finished = ops.expand_dims(done, -1)
    log_probs = ops.where(finished, ops.where(ops.arange(k) == 0, 0.0, _NEG), log_probs)
    top_ids = ops.where(finished, 0, top_ids)  # its only live candidate: [PAD]
    candidates = ops.reshape(ops.expand_dims(scores, -1) + log_probs, (batch, k * k))
    scores, flat_index = ops.top_k(candidates, k)
    next_ids = ops.take_along_axis(ops.reshape(top_ids, (batch, k * k)), flat_index, axis=1)
    return scores, flat_index // k, next_ids


def beam_search(model, source_ids, max_length, beam_size, length_penalty,
                reorder_caches=False, stage_step=None, unroll=1):
    """Beam search with the length penalty of Wu et al. (2016),
    `((5 + length) / 6) ** alpha`, applied when choosing among the final
    beams. A finished beam keeps its score and competes for its slot; the
    search stops when every beam has finished. Returns `(batch,
    max_length)` int32 ids.

    `reorder_caches`: after every step, copy each beam's self-attention
    caches from its parent's row (a gather of whole rows) instead of leaving
    them in place and reading every position through `cache_rows`. Same
    ids. Slower under XLA (Keras int8 beam b8 at two threads 5.40 -> 6.18 ms
    a step), faster in a TFLite `WHILE` loop, where a gather of a few whole
    rows beats one of every (row, head, position) slice (dynamic int8 beam
    b1 0.75 -> 0.72, b8 8.14 -> 7.54 ms in a throwaway check; the session-14
    tables of benchmarks/RESULTS.md): `export_tflite` sets it.
    `stage_step`: see `_stages`.

    `unroll`: decoding steps per loop iteration (`_staged_while_loop`), for
    TFLite with `reorder_caches`: there a loop copies every cache it
    changes back into its inputs at the end of each iteration, and a cache
    write reads a loop input, so it copies the whole cache first; inside an
    unrolled iteration, the write after a reordering gather updates the
    gather's result in place (TFLite's planner shares an op's input buffer
    with its output when nothing else reads the input and neither is a
    loop input or output). `export_tflite` sets it where the caches are
    large against the weights (`tflite._beam_unroll`; benchmarks/RESULTS.md,
    session 18)."""
    k = beam_size
    encoder_outputs, source_mask = model.encode(source_ids, training=False)
    batch = ops.shape(source_ids)[0]
    # Beams live in the batch axis: (batch * k, ...), beam-major per example.
    cross_caches = model.decoder.compute_cross_attention_caches(
        encoder_outputs, layout="split"
    )
    if source_ids.shape[0] is None:
        # A batch size known only at run time: one copy of the source's
        # keys/values per beam.
        cross_caches = [tuple(ops.repeat(t, k, axis=0) for t in c) for c in cross_caches]
        source_mask = ops.repeat(source_mask, k, axis=0)
    # Otherwise the k beams of a source share its cross-attention cache:
    # `MultiHeadAttention` reads it once for all of them (k query rows
    # against one copy), where k copies made every step read k times the
    # memory.
    batch_offsets = ops.expand_dims(ops.arange(batch) * k, 1)

    own_rows = ops.expand_dims(ops.arange(batch * k, dtype="int32"), 1)

    def body(i, tokens, sequences, scores, lengths, done, cache_rows, caches):
        # The caches stay in place: each row writes position i into its own
        # row, and `cache_rows` says where every beam's earlier positions
        # are. Reordering the caches instead copied all of them twice a
        # step (a gather, then back into the loop's buffer); see
        # `reorder_caches` for where that is still the faster way.
        if not reorder_caches:
            cache_rows = ops.slice_update(cache_rows, (0, i), own_rows)
        logits, caches = model.decode_step(
            tokens, i, caches, cross_caches, source_mask,
            cache_rows=None if reorder_caches else cache_rows,
        )
        scores, beam, next_ids = _select_two_stage(logits, scores, done, batch, k)
        sequences = ops.take_along_axis(sequences, ops.expand_dims(beam, -1), axis=1)
        sequences = ops.slice_update(
            sequences, (0, 0, i), ops.expand_dims(next_ids, -1)
        )
        was_done = ops.take_along_axis(done, beam, axis=1)
        lengths = ops.take_along_axis(lengths, beam, axis=1) + ops.cast(
            ops.logical_not(was_done), "int32"
        )
        done = was_done | (next_ids == model.end_token_id) | (next_ids == 0)
        parents = ops.reshape(batch_offsets + beam, (-1,))
        if reorder_caches:
            caches = keras.tree.map_structure(lambda c: ops.take(c, parents, axis=0), caches)
        else:
            cache_rows = ops.take(cache_rows, parents, axis=0)
        return (i + 1, ops.reshape(next_ids, (-1, 1)), sequences, scores, lengths, done,
                cache_rows, caches)

    first_beam_only = ops.where(ops.arange(k) == 0, 0.0, _NEG)
    stages = _stages(max_length, stage_step)
    first_stage = stages[0]
    state = (
        ops.convert_to_tensor(0, "int32"),
        ops.full((batch * k, 1), model.start_token_id, "int32"),
        ops.zeros((batch, k, max_length), "int32"),
        ops.tile(ops.expand_dims(first_beam_only, 0), (batch, 1)),
        ops.zeros((batch, k), "int32"),
        ops.zeros((batch, k), "bool"),
        ops.zeros((batch * k, first_stage), "int32"),
        _empty_self_attention_caches(model, batch * k, first_stage),
    )
    _, _, sequences, scores, lengths, _, _, _ = _staged_while_loop(
        body, state, stages, done_index=5, grown_axes={6: 1, 7: 2}, unroll=unroll)
    penalty = ops.power((5.0 + ops.cast(lengths, "float32")) / 6.0, length_penalty)
    # `_argmax`, not `ops.argmax`: the latter's negative-zero fix-up is a
    # BitwiseAnd on TensorFlow, which has no TFLite builtin, and stops
    # `export_tflite(method="beam")` from converting. The scores here are
    # sums of log-probabilities over positive penalties, never -0.0, so
    # the choice is the same.
    best = _argmax(scores / penalty)
    return ops.take_along_axis(
        sequences, ops.reshape(best, (-1, 1, 1)), axis=1
    )[:, 0]


def _validate(model, source_ids, max_length, method, beam_size, length_penalty, jit_compile):
    source_ids = np.asarray(source_ids) if not hasattr(source_ids, "dtype") else source_ids
    dtype = keras.backend.standardize_dtype(source_ids.dtype)
    if "int" not in dtype:
        raise ValueError(
            "`source_ids` must be integer token ids; received dtype "
            f"{dtype}. Tokenize the text first (WordPieceTokenizer.tokenize)."
        )
    if len(source_ids.shape) != 2:
        raise ValueError(
            "`source_ids` must have shape (batch, source_length); received "
            f"shape {tuple(source_ids.shape)}."
        )
    if method not in ("greedy", "beam"):
        raise ValueError(f'`method` must be "greedy" or "beam"; received {method!r}.')
    if max_length is None:
        max_length = model.max_length or 2 * int(source_ids.shape[1])
    if not isinstance(max_length, (int, np.integer)) or max_length <= 0:
        raise ValueError(f"`max_length` must be a positive int; received {max_length!r}.")
    if model.positional == "learned" and max_length > model.max_length:
        raise ValueError(
            f"max_length={max_length} exceeds the model's learned position "
            f"table (max_length={model.max_length})."
        )
    if method == "beam" and (not isinstance(beam_size, (int, np.integer)) or beam_size <= 0):
        raise ValueError(f"`beam_size` must be a positive int; received {beam_size!r}.")
    if method == "beam" and beam_size > model.target_vocabulary_size:
        raise ValueError("`beam_size` cannot exceed the target vocabulary size.")
    if length_penalty < 0:
        raise ValueError(f"`length_penalty` must be >= 0; received {length_penalty}.")
    if jit_compile not in ("auto", True, False):
        raise ValueError(f'`jit_compile` must be "auto", True or False; received {jit_compile!r}.')
    return ops.convert_to_tensor(source_ids, "int32"), int(max_length)


def resolve_jit_compile(jit_compile):
    """`"auto"`: XLA. Decoding is many small steps whose per-op overhead
    XLA removes: benchmarks/generate.py measures it faster than TensorFlow's
    default kernels on this CPU too (and GPU/TPU always want it); on JAX,
    benchmarks/backends.py measures `jax.jit` against eager dispatch. PyTorch
    has no XLA: there the search always runs eagerly (see `generate`)."""
    return True if jit_compile == "auto" else bool(jit_compile)


def _compile(model, search, jit):
    """`search(source_ids)` as one compiled function on the current backend,
    or `None` where it runs eagerly.

    TensorFlow: one `tf.function` (XLA when `jit`). JAX: one `jax.jit`
    program that takes the model's variable values as arguments (stateless,
    as Keras' JAX trainer calls a model), so the weights are not baked into
    the program as constants and later weight updates are seen. Both trace
    once per input shape (batch, source length) and reuse the program.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(search, jit_compile=jit, reduce_retracing=False)
    if backend == "jax" and jit:
        import jax

        variables = list(model.variables)

        def stateless_search(values, ids):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return search(ids)

        compiled = jax.jit(stateless_search)
        return lambda ids: compiled([v.value for v in variables], ids)
    return None


def generate(model, source_ids, max_length=None, method="greedy", beam_size=4,
             length_penalty=0.6, jit_compile="auto"):
    """See `Transformer.generate`."""
    source_ids, max_length = _validate(
        model, source_ids, max_length, method, beam_size, length_penalty, jit_compile
    )
    if not model.built:
        model.build()
    if method == "greedy":
        beam_size, length_penalty = 1, 0.0
    jit = resolve_jit_compile(jit_compile)

    def search(ids):
        if method == "greedy":
            return greedy_search(model, ids, max_length)
        return beam_search(model, ids, max_length, int(beam_size), float(length_penalty))

    functions = _COMPILED.setdefault(model, {})
    key = (keras.backend.backend(), method, max_length, int(beam_size),
           float(length_penalty), jit)
    if key not in functions:
        functions[key] = _compile(model, search, jit)
    function = functions[key]
    if function is not None:
        return ops.convert_to_numpy(function(source_ids))
    if keras.backend.backend() == "torch":
        import torch

        # Decoding needs no gradients: without this every step records
        # autograd history. torch.compile is no help here: it unrolls the
        # Python while loop of Keras' torch backend, one graph per length.
        with torch.no_grad():
            return ops.convert_to_numpy(search(source_ids))
    return ops.convert_to_numpy(search(source_ids))
