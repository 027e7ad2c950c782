"""Beam search with its caches left in place (issue 14): each beam's
earlier positions read through `cache_rows` instead of reordering every
cache after every step; the same logits and sequences as before."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_xformer.decoding.search import _NEG


def flat_select(candidates, k):
    batch, _, vocabulary = candidates.shape
    scores, flat = ops.top_k(ops.reshape(candidates, (batch, -1)), k)
    return scores, flat // vocabulary, ops.cast(flat % vocabulary, "int32")


def reference_beam_search(model, source_ids, max_length, k, length_penalty):
    """The beam search before issue 14, kept as the reference: one top_k
    over all candidates, caches reordered (copied) after every step."""
    encoder_outputs, source_mask = model.encode(source_ids, training=False)
    batch = source_ids.shape[0]
    cross = [ops.repeat(c, k, axis=0)
             for c in model.decoder.compute_cross_attention_caches(encoder_outputs)]
    source_mask = ops.repeat(source_mask, k, axis=0)
    vocabulary = model.target_vocabulary_size
    pad_only = ops.where(ops.arange(vocabulary) == 0, 0.0, _NEG)
    head_dim = model.hidden_dim // model.num_heads
    caches = [ops.zeros((batch * k, 2, max_length, model.num_heads, head_dim))
              for _ in range(model.num_layers)]
    tokens = ops.full((batch * k, 1), model.start_token_id, "int32")
    sequences = np.zeros((batch, k, max_length), "int32")
    scores = np.tile(np.where(np.arange(k) == 0, 0.0, _NEG).astype("float32"), (batch, 1))
    lengths = np.zeros((batch, k), "int32")
    done = np.zeros((batch, k), bool)
    for i in range(max_length):
        if done.all():
            break
        logits, caches = model.decode_step(tokens, i, caches, cross, source_mask)
        log_probs = ops.reshape(ops.log_softmax(logits, axis=-1), (batch, k, vocabulary))
        log_probs = ops.where(ops.convert_to_tensor(done[..., None]), pad_only, log_probs)
        candidates = ops.convert_to_tensor(scores[..., None]) + log_probs
        scores, beam, ids = (ops.convert_to_numpy(t) for t in flat_select(candidates, k))
        sequences = np.take_along_axis(sequences, beam[..., None], axis=1)
        sequences[:, :, i] = ids
        was_done = np.take_along_axis(done, beam, axis=1)
        lengths = np.take_along_axis(lengths, beam, axis=1) + ~was_done
        done = was_done | (ids == model.end_token_id) | (ids == 0)
        rows = ops.convert_to_tensor((np.arange(batch)[:, None] * k + beam).reshape(-1))
        caches = [ops.take(c, rows, axis=0) for c in caches]
        tokens = ops.convert_to_tensor(ids.reshape(-1, 1))
    penalty = ((5.0 + lengths) / 6.0) ** length_penalty
    best = np.argmax(scores / penalty, axis=-1)
    return sequences[np.arange(batch), best], scores


@pytest.mark.parametrize("norm_first, blocked_top_k", [(False, False), (True, False), (False, True)])
def test_beam_search_equals_the_reordering_reference(norm_first, blocked_top_k, monkeypatch):
    from keras_xformer.decoding import search as search_module
    from keras_xformer.models import Transformer

    if blocked_top_k:
        # `_top_k` in blocks of 4 over the 30-token vocabulary (padded to
        # 32), as it runs over large ones: the reference's one top_k.
        monkeypatch.setattr(search_module, "_TOP_K_MIN_LENGTH", 0)
        monkeypatch.setattr(search_module, "_TOP_K_BLOCK", 4)

    keras.utils.set_random_seed(1)
    model = Transformer(30, 30, num_layers=2, hidden_dim=16, num_heads=2,
                        intermediate_dim=32, dropout=0.0, norm_first=norm_first,
                        tie_output_embeddings=False)
    model.build()
    # Larger random weights and a [PAD]-free output, so the beams differ
    # and run on (at initialisation every beam says [PAD] at once).
    rng = np.random.default_rng(5)
    for variable in model.trainable_variables:
        if len(variable.shape) >= 2:
            variable.assign(rng.normal(0, 0.3, variable.shape).astype("float32"))
    bias = np.zeros(30, "float32")
    bias[0], bias[3] = -1e4, -1.0
    model.output_projection.bias.assign(bias)
    source = rng.integers(4, 30, (4, 7)).astype("int32")
    source[1, 5:] = 0
    expected, _ = reference_beam_search(model, source, 9, 3, 0.6)
    assert len({tuple(row) for row in expected}) > 1
    for jit_compile in (True, False):
        got = model.generate(source, max_length=9, method="beam", beam_size=3,
                             jit_compile=jit_compile)
        np.testing.assert_array_equal(got, expected)
    # The caches copied from each beam's parent every step (what TFLite
    # files run) instead of read through `cache_rows`: the same ids.
    from keras_xformer.decoding.search import beam_search

    got = beam_search(model, ops.convert_to_tensor(source), 9, 3, 0.6, reorder_caches=True)
    np.testing.assert_array_equal(ops.convert_to_numpy(got), expected)
    if keras.backend.backend() == "tensorflow":
        # A batch size known only at run time (a graph with a `None` batch):
        # the beams get copies of the cross-attention cache instead of
        # sharing one (the search above), with the same results.
        import tensorflow as tf

        from keras_xformer.decoding.search import beam_search

        search = tf.function(lambda ids: beam_search(model, ids, 9, 3, 0.6),
                             input_signature=[tf.TensorSpec([None, 7], tf.int32)])
        np.testing.assert_array_equal(search(source).numpy(), expected)


def test_cache_rows_read_like_a_reordered_cache():
    from keras_xformer.layers import MultiHeadAttention

    layer = MultiHeadAttention(num_heads=2, key_dim=4)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 1, 8)).astype("float32")
    cache = rng.normal(size=(3, 2, 5, 2, 4)).astype("float32")
    # Position t of row b lives in cache row rows[b, t]; position 2 (this
    # step's, being written) in the row itself.
    rows = np.array([[2, 0, 0, 1, 1], [1, 1, 1, 0, 0], [0, 2, 2, 2, 2]], "int32")
    rows[:, 2] = np.arange(3)
    out, new_cache = layer(x, x, cache=cache, cache_update_index=2,
                           cache_rows=rows, use_causal_mask=True)
    gathered = cache[rows, :, np.arange(5)[None]]  # (3, 5, 2, heads, dim)
    reordered = np.transpose(gathered, (0, 2, 1, 3, 4)).copy()
    expected, _ = layer(x, x, cache=reordered, cache_update_index=2, use_causal_mask=True)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-6)
    # The cache itself is written in place: row b, position 2.
    np.testing.assert_array_equal(np.asarray(new_cache)[:, :, :2], cache[:, :, :2])
    with pytest.raises(ValueError, match="cache_update_index"):
        layer(x, x, cache=cache, cache_rows=rows)


@pytest.mark.parametrize("layout", ["stacked", "split"])
def test_decode_step_with_cache_rows_equals_reordered_caches(layout):
    """Random parents every step (beams swapping, dying, duplicating): the
    logits read through `cache_rows` from caches left in place equal those
    from caches physically reordered, as the search did before, in both
    cache layouts."""
    from keras_xformer.models import Transformer

    keras.utils.set_random_seed(3)
    model = Transformer(30, 30, num_layers=2, hidden_dim=16, num_heads=2,
                        intermediate_dim=32, dropout=0.0, norm_first=True)
    model.build()
    rng = np.random.default_rng(4)
    rows, steps = 6, 7
    source = rng.integers(4, 30, (rows, 5)).astype("int32")
    encoder_outputs, source_mask = model.encode(source)
    cross = model.decoder.compute_cross_attention_caches(encoder_outputs, layout=layout)
    head_dim = model.hidden_dim // model.num_heads
    if layout == "stacked":
        zeros = [ops.zeros((rows, 2, steps, model.num_heads, head_dim))
                 for _ in range(model.num_layers)]
    else:
        zeros = [(ops.zeros((rows, model.num_heads, steps, head_dim)),) * 2
                 for _ in range(model.num_layers)]
    moved, in_place = list(zeros), list(zeros)
    cache_rows = np.zeros((rows, steps), "int32")
    for i in range(steps):
        tokens = ops.convert_to_tensor(rng.integers(4, 30, (rows, 1)).astype("int32"))
        cache_rows[:, i] = np.arange(rows)
        expected, moved = model.decode_step(tokens, i, moved, cross, source_mask)
        got, in_place = model.decode_step(tokens, i, in_place, cross, source_mask,
                                          cache_rows=ops.convert_to_tensor(cache_rows))
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)
        parents = rng.integers(0, rows, rows).astype("int32")
        moved = [keras.tree.map_structure(
            lambda t: ops.take(t, ops.convert_to_tensor(parents), axis=0), c) for c in moved]
        cache_rows = cache_rows[parents]


def test_cache_stages():
    from keras_xformer.decoding.search import _stages

    assert _stages(1) == [1]
    assert _stages(32) == [32]
    assert _stages(48) == [48]
    assert _stages(49) == [32, 49]
    assert _stages(64) == [32, 64]
    assert _stages(67) == [32, 67]
    assert _stages(100) == [32, 64, 100]
    # Stepped (TFLite files): every 16 positions, a short last stage
    # merged, at most 8 loops.
    assert _stages(10, 16) == [10]
    assert _stages(24, 16) == [16, 24]
    assert _stages(64, 16) == [16, 32, 48, 64]
    assert _stages(67, 16) == [16, 32, 48, 67]
    assert _stages(72, 16) == [16, 32, 48, 64, 72]
    assert _stages(200, 16) == [32, 64, 96, 128, 160, 200]
    assert len(_stages(1000, 16)) <= 8


def _random_model(seed):
    from keras_xformer.models import Transformer

    keras.utils.set_random_seed(seed)
    model = Transformer(30, 30, num_layers=2, hidden_dim=16, num_heads=2,
                        intermediate_dim=32, dropout=0.0, tie_output_embeddings=False)
    model.build()
    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables:
        if len(variable.shape) >= 2:
            variable.assign(rng.normal(0, 0.3, variable.shape).astype("float32"))
    bias = np.zeros(30, "float32")
    bias[0], bias[3] = -1e4, -2.0  # rows end at different steps, some not at all
    model.output_projection.bias.assign(bias)
    source = rng.integers(4, 30, (4, 7)).astype("int32")
    source[1, 5:] = 0
    return model, source


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_staged_caches_decode_as_one_full_length_cache(method, monkeypatch):
    # First stage 4: the search runs loops with 4-, 8- and 13-slot caches,
    # carrying the caches (and beam search's cache rows) from one to the
    # next; the ids equal one loop over 13-slot caches, with and without
    # XLA.
    from keras_xformer.decoding import search

    model, source = _random_model(2)
    expected = {}
    for first, jit in ((1000, True), (4, True), (4, False)):
        monkeypatch.setattr(search, "_FIRST_STAGE", first)
        search._COMPILED.pop(model, None)
        expected.setdefault(first, model.generate(source, max_length=13, method=method,
                                                  beam_size=3, jit_compile=jit))
        np.testing.assert_array_equal(expected[first], expected[1000])
    # Not all rows ended in the first stage, nor in the second.
    assert (expected[1000][:, 8:] != 0).any()


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_stepped_stages_decode_as_doubling_ones(method):
    # `stage_step=3`: loops with 3-, 6-, 9- and 13-slot caches (TFLite's
    # schedule, at a size that makes several stages), the same ids as
    # `generate`'s 13-slot loop, with beam search's caches reordered as in
    # TFLite or read through `cache_rows`.
    from keras_xformer.decoding.search import _stages
    from keras_xformer.decoding.search import beam_search
    from keras_xformer.decoding.search import greedy_search

    assert _stages(13, 3) == [3, 6, 9, 13]
    model, source = _random_model(3)
    expected = model.generate(source, max_length=13, method=method, beam_size=3)
    ids = ops.convert_to_tensor(source)
    if method == "greedy":
        actual = [greedy_search(model, ids, 13, stage_step=3)]
    else:
        actual = [beam_search(model, ids, 13, 3, 0.6, reorder_caches=reorder, stage_step=3)
                  for reorder in (False, True)]
    for ids_out in actual:
        np.testing.assert_array_equal(ops.convert_to_numpy(ids_out), expected)
    assert (expected[:, 9:] != 0).any()  # some rows reach the last stage


def _early_ending_model():
    """`_random_model` with [END] favoured: every row ends within a few
    steps (greedy: at the first or second), so an unrolled loop takes steps
    after the last row is done."""
    model, source = _random_model(7)
    bias = np.zeros(30, "float32")
    bias[0], bias[3] = -1e4, 3.0
    model.output_projection.bias.assign(bias)
    return model, source


@pytest.mark.parametrize("method", ["greedy", "beam"])
@pytest.mark.parametrize("unroll", [2, 4])
@pytest.mark.parametrize("ending", ["late", "early"])
def test_unrolled_loops_decode_as_single_steps(method, unroll, ending):
    # Several steps per loop iteration (TFLite's beam search: fewer cache
    # copies), over stepped stages of 3, 3, 3 and 4 positions, so that
    # stages shorter than `unroll` and remainders run single steps: the
    # same ids as `generate`. "early": every row ends before the last
    # iteration, whose later steps then run with every row done.
    from keras_xformer.decoding.search import beam_search
    from keras_xformer.decoding.search import greedy_search

    model, source = _random_model(3) if ending == "late" else _early_ending_model()
    expected = model.generate(source, max_length=13, method=method, beam_size=3)
    ids = ops.convert_to_tensor(source)
    for stage_step in (3, None):
        if method == "greedy":
            actual = [greedy_search(model, ids, 13, stage_step=stage_step, unroll=unroll)]
        else:
            actual = [beam_search(model, ids, 13, 3, 0.6, reorder_caches=reorder,
                                  stage_step=stage_step, unroll=unroll)
                      for reorder in (False, True)]
        for ids_out in actual:
            np.testing.assert_array_equal(ops.convert_to_numpy(ids_out), expected)
    if ending == "late":
        assert (expected[:, 9:] != 0).any()
    else:
        # Every row ended (a 0 after its [END]) by position 5: the last
        # steps of an iteration ran after every row was done.
        assert (expected[:, 5:] == 0).all() and (expected[:, 0] != 0).all()


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_staged_caches_in_tflite(method, monkeypatch, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from keras_xformer.decoding import search
    from keras_xformer.export import export_tflite

    from keras_xformer.export import tflite

    model, source = _random_model(4)
    monkeypatch.setattr(search, "_FIRST_STAGE", 4)
    # The file's caches grow every 4 positions here: 4, 8 and 13 slots.
    monkeypatch.setattr(tflite, "_STAGE_STEP", 4)
    search._COMPILED.pop(model, None)
    expected = model.generate(source, max_length=13, method=method, beam_size=3)
    # The file's beam search takes its top_k in blocks (`_top_k`, blocks
    # of 4 here), `expected` with one top_k: the same ids.
    monkeypatch.setattr(search, "_TOP_K_MIN_LENGTH", 0)
    monkeypatch.setattr(search, "_TOP_K_BLOCK", 4)
    path = str(tmp_path / "staged.tflite")
    export_tflite(path, model, 7, 13, batch_size=4, method=method, beam_size=3)
    runner = Interpreter(model_path=path).get_signature_runner()
    np.testing.assert_array_equal(runner(source_ids=source)["target_ids"], expected)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("ending", ["late", "early"])
def test_unrolled_beam_search_in_tflite(ending, monkeypatch, tmp_path):
    # A beam-search file whose loop runs 4 steps an iteration (as
    # `export_tflite` does where the caches are large against the weights;
    # the share lowered here so that this model's 12 rows qualify and 11 do
    # not), caches growing every 4 positions (4, 8, 13: the last stage's
    # 5th step single): the same ids as `generate`, also when every row has
    # ended inside an iteration.
    from ai_edge_litert.interpreter import Interpreter

    from keras_xformer.export import export_tflite
    from keras_xformer.export import tflite

    model, source = _random_model(4) if ending == "late" else _early_ending_model()
    expected = model.generate(source, max_length=13, method="beam", beam_size=3)
    monkeypatch.setattr(tflite, "_STAGE_STEP", 4)
    weight_bytes = 4 * (model.decoder.count_params() + model.output_projection.count_params())
    cache_bytes_per_row = 2 * 2 * 13 * 16 * 4  # layers, keys and values, positions, width
    monkeypatch.setattr(tflite, "_UNROLL_MIN_CACHE_SHARE", 11.5 * cache_bytes_per_row / weight_bytes)
    assert tflite._beam_unroll(model, 12, 13) == 4 and tflite._beam_unroll(model, 11, 13) == 1
    path = str(tmp_path / "unrolled.tflite")
    export_tflite(path, model, 7, 13, batch_size=4, method="beam", beam_size=3)
    runner = Interpreter(model_path=path).get_signature_runner()
    np.testing.assert_array_equal(runner(source_ids=source)["target_ids"], expected)
    if ending == "early":
        assert (expected[:, 5:] == 0).all()


@pytest.mark.parametrize("n, block, k", [(64, 8, 4), (61, 8, 3), (8000, 32, 4), (1030, 32, 1)])
def test_top_k_in_blocks_equals_top_k(monkeypatch, n, block, k):
    """`_top_k` (block maxima, the k best blocks, a top_k over their
    values) gives top_k's values and indices: on random rows, on rows with
    many exact ties, equal rows, -inf values, and a length that is no
    multiple of the block (padded with -inf)."""
    from keras_xformer.decoding import search

    monkeypatch.setattr(search, "_TOP_K_MIN_LENGTH", 0)
    rng = np.random.default_rng(n)
    x = np.concatenate([
        rng.normal(size=(3, n)),
        np.round(rng.normal(size=(3, n)), 1),  # many ties
        np.zeros((1, n)),  # all equal
        np.where(rng.random((2, n)) < 0.9, -np.inf, rng.normal(size=(2, n))),
        np.full((1, n), -np.inf),
    ]).astype("float32")
    values, ids = search._top_k(ops.convert_to_tensor(x), k, block=block)
    values, ids = ops.convert_to_numpy(values), ops.convert_to_numpy(ids)
    expected_values, expected_ids = (ops.convert_to_numpy(t) for t in ops.top_k(x, k))
    np.testing.assert_array_equal(values, expected_values)
    assert ids.shape == (len(x), k)
    np.testing.assert_array_equal(np.take_along_axis(x, ids.astype("int64"), 1), values)
    assert all(len(set(row)) == k for row in ids) and ids.min() >= 0 and ids.max() < n
    if keras.backend.backend() != "torch":
        # torch.topk leaves the order of equal values unspecified.
        np.testing.assert_array_equal(ids, expected_ids)
    # Short rows take ops.top_k itself.
    monkeypatch.setattr(search, "_TOP_K_MIN_LENGTH", n + 1)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(search._top_k(ops.convert_to_tensor(x), k, block=block)[0]),
        expected_values)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_stage_selection_equals_one_top_k_over_every_candidate(seed):
    """`_select_two_stage` (a top_k per beam, then over the k * k survivors)
    picks what one top_k over all k * vocabulary log-probabilities picks:
    the same scores, beams and ids, finished beams offering [PAD] alone,
    ties broken by lower beam then lower id."""
    from keras_xformer.decoding.search import _select_two_stage

    rng = np.random.default_rng(seed)
    batch, k, vocabulary = 3, 4, 50
    # Rounded logits: many exact ties, within and across beams.
    logits = np.round(rng.normal(0, 2, (batch * k, vocabulary)), 1).astype("float32")
    logits[1] = logits[0]  # two beams with the same logits
    scores = np.round(rng.normal(-3, 1, (batch, k)), 1).astype("float32")
    scores[1, 1] = scores[1, 0]
    scores[0, 1:] = _NEG  # the first step: only beam 0 is live
    done = rng.random((batch, k)) < 0.4
    done[0] = False
    log_probs = ops.reshape(ops.log_softmax(logits, axis=-1), (batch, k, vocabulary))
    pad_only = ops.where(ops.arange(vocabulary) == 0, 0.0, _NEG)
    log_probs = ops.where(ops.convert_to_tensor(done[..., None]), pad_only, log_probs)
    expected = flat_select(ops.convert_to_tensor(scores[..., None]) + log_probs, k)
    got = _select_two_stage(ops.convert_to_tensor(logits), ops.convert_to_tensor(scores),
                            ops.convert_to_tensor(done), batch, k)
    np.testing.assert_allclose(ops.convert_to_numpy(got[0]), ops.convert_to_numpy(expected[0]),
                               rtol=1e-6, atol=1e-5)
    got_picks, expected_picks = (
        np.stack([ops.convert_to_numpy(t) for t in picks[1:]], -1) for picks in (got, expected)
    )
    if keras.backend.backend() == "torch":
        # torch.topk leaves the order of equal values unspecified (for one
        # top_k as for two): the same picks, in some order among ties.
        got_picks, expected_picks = (np.sort(p[..., 0] * vocabulary + p[..., 1], axis=-1)
                                     for p in (got_picks, expected_picks))
    np.testing.assert_array_equal(got_picks, expected_picks)
    # Every beam of source 2 finished: its k best are its beams' own [PAD]s.
    done[2] = True
    got = _select_two_stage(ops.convert_to_tensor(logits), ops.convert_to_tensor(scores),
                            ops.convert_to_tensor(done), batch, k)
    np.testing.assert_allclose(ops.convert_to_numpy(got[0])[2], np.sort(scores[2])[::-1])
    beams = ops.convert_to_numpy(got[1])[2]
    if keras.backend.backend() == "torch":
        beams = np.sort(beams)  # ties in any order, as above
    np.testing.assert_array_equal(beams, np.argsort(-scores[2], kind="stable")
                                  if keras.backend.backend() != "torch" else np.arange(k))
    np.testing.assert_array_equal(ops.convert_to_numpy(got[2])[2], 0)
