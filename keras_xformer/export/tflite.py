"""TFLite export: the whole decoding loop (greedy or beam search) in one
`.tflite` file, for a fixed batch size, with TFLite builtin ops only."""

import keras
import tensorflow as tf

from keras_xformer.decoding.search import beam_search
from keras_xformer.decoding.search import greedy_search
from keras_xformer.export._checks import check_beam_args
from keras_xformer.export._checks import check_export_args
from keras_xformer.export._checks import check_positive_int

QUANTIZATIONS = (None, "dynamic_int8", "float16")

# The search's caches grow every 16 positions (16, 32, 48, 64 for 64
# tokens) instead of doubling (32, 64): a TFLite loop copies its caches
# every step (its memory planner cannot update a loop variable in place),
# so shorter ones pay (benchmarks/RESULTS.md, session 15).
_STAGE_STEP = 16
# Beam search whose self-attention caches (float32, at full length) take at
# least this share of the decoder's float32 weights (its layers and output
# projection) runs _BEAM_UNROLL decoding steps per loop iteration
# (`beam_search`'s `unroll`): fewer whole-cache copies, but the interpreter
# then holds XNNPACK's packed weights once per unrolled step. On
# generate.py's model (25 MB of such weights; benchmarks/tflite_unroll.py,
# benchmarks/RESULTS.md, session 18), dynamic int8, two threads: beam b8
# (16 MiB of caches) and b4 (8 MiB) gained, b2 (4 MiB) lost.
_BEAM_UNROLL = 4
_UNROLL_MIN_CACHE_SHARE = 0.25
METHODS = ("greedy", "beam")


def export_tflite(path, model, source_length, max_target_length, quantization=None,
                  batch_size=1, method="greedy", beam_size=4, length_penalty=0.6):
    """Writes a `.tflite` file mapping source ids to generated target ids.

    Signature `serving_default`: input `source_ids` (`int32 [batch_size,
    source_length]`, 0-padded) to output `target_ids` (`int32 [batch_size,
    max_target_length]`: the tokens after [START], [END] included, then 0s).
    The encoder runs once and the decoder steps use key/value caches inside
    one TFLite `WHILE` loop, greedy or beam search as `model.generate` runs
    them, with TFLite builtin ops only (no Flex / SELECT_TF_OPS), so the file
    runs in `ai_edge_litert.interpreter.Interpreter` as on a phone.
    Unquantized it matches `model.generate(..., method=method)` token for
    token.

    The batch is fixed in the file (TFLite plans its buffers for one shape):
    fill a short batch up with rows of 0s; rows are independent, so padding
    rows and 0-padded sources do not change the other rows' outputs. Export
    one file per batch size and method you serve.

    Beam search over large batches (self-attention caches of at least a
    quarter of the decoder's float32 weights: batch 4 and up at beam 4 for
    a 4-layer, width-256 model with a vocabulary of 8000 and 64 target
    tokens) runs 4 decoding steps per loop iteration, which saves cache
    copies and costs memory, as the runtime holds the packed weights once
    per step. On that model at batch 8 (benchmarks/tflite_unroll.py), the
    dynamic int8 file took 0.81x the time for 161 -> 238 MiB peak memory,
    and the float32 file 0.87x for 263 -> 534 MiB.

    The file takes ids, so a model trained with protected spans (`xformer
    train --data`, see `keras_xformer.text.spans`) needs its spans masked
    before tokenization and put back after, in the app:

    ```python
    from keras_xformer.text.spans import protect, restore

    masked, spans = protect(["Delete %(name)s?"])
    ids = encode_source(source_tokenizer, masked, source_length)
    target_ids = runner(source_ids=ids.numpy())["target_ids"]
    texts = [t.decode() for t in target_tokenizer.detokenize(target_ids).numpy()]
    translations = restore(texts, spans)
    ```

    `xformer translate` and the `--data` SavedModel also translate a text
    of several sentences sentence by sentence; an app does the same around
    the file with `keras_xformer.text.sentences`: `sentences, separators =
    split_sentences(texts)`, translate `sentences.flat_values` as above, then
    `join_sentences(sentences.with_flat_values(translations), separators)`.

    Args:
        path: the `.tflite` file to write.
        model: a `keras_xformer.models.Transformer`.
        source_length: the fixed source length `S`.
        max_target_length: target tokens generated at most.
        quantization: `None`, `"dynamic_int8"` (int8 weights, float
            activations: about a quarter of the float file) or `"float16"`
            (float16 weights).
        batch_size: the fixed number of rows per call (default 1).
        method: `"greedy"` (default) or `"beam"`.
        beam_size: beams per row, for `method="beam"` (default 4).
        length_penalty: `alpha` of the beam length penalty
            `((5 + length) / 6) ** alpha`, for `method="beam"` (default 0.6),
            as in `Transformer.generate`.

    Returns:
        The size of the file in bytes.

    Example:

    ```python
    export_tflite("beam8.tflite", model, 64, 64, quantization="dynamic_int8",
                  batch_size=8, method="beam", beam_size=4)
    ```
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be one of {QUANTIZATIONS}; received {quantization!r}."
        )
    check_export_args(model, source_length=source_length,
                      max_target_length=max_target_length)
    check_positive_int("batch_size", batch_size)
    if method not in METHODS:
        raise ValueError(
            f'`method` must be "greedy" or "beam"; received {method!r}.'
        )
    if method == "beam":
        check_beam_args(model, beam_size, length_penalty)
    if model.compute_dtype != "float32" or any(
        layer.quantization_mode for layer in model._flatten_layers()
    ):
        # TFLite builtins take no int8 activations (Keras' int8 matmuls)
        # and no bfloat16 ops (a model trained with `--precision
        # mixed_bfloat16`: "Some ops are not supported by the native TFLite
        # runtime"): export what the weights compute, in float32, and let
        # `quantization` re-quantize it the TFLite way.
        from keras_xformer.layers._quantization import dequantized_copy

        model = dequantized_copy(model, dtype="float32")
    variables = list(model.variables)
    weights = [v.numpy() for v in variables]

    @tf.function(input_signature=[
        tf.TensorSpec([batch_size, source_length], tf.int32, name="source_ids")
    ])
    def translate(source_ids):
        # The weights enter the graph as constants, before the loop, and the
        # loop body sees plain tensors: variables read inside a TFLite WHILE
        # body fail conversion ("Failed to functionalize Control Flow V1
        # ops"), and kept as TFLite resource variables they read as zeros.
        values = [tf.constant(w) for w in weights]
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            if method == "greedy":
                ids = greedy_search(model, source_ids, max_target_length,
                                    stage_step=_STAGE_STEP)
            else:
                ids = beam_search(model, source_ids, max_target_length,
                                  beam_size, float(length_penalty),
                                  # Faster in a TFLite loop than reading
                                  # through `cache_rows` (see beam_search).
                                  reorder_caches=True, stage_step=_STAGE_STEP,
                                  unroll=_beam_unroll(model, batch_size * beam_size,
                                                      max_target_length))
        return {"target_ids": ids}

    concrete = translate.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    flatbuffer = converter.convert()
    with open(path, "wb") as f:
        f.write(flatbuffer)
    return len(flatbuffer)


def _beam_unroll(model, rows, max_length):
    """Decoding steps per loop iteration of a beam search over `rows` rows
    (batch size times beam size): `_BEAM_UNROLL` where the keys and values
    of every decoder layer at `max_length` positions take at least
    `_UNROLL_MIN_CACHE_SHARE` of the decoder's weights, else 1."""
    cache_bytes = rows * model.num_layers * 2 * max_length * model.hidden_dim * 4
    weight_bytes = 4 * (model.decoder.count_params() + model.output_projection.count_params())
    return _BEAM_UNROLL if cache_bytes >= _UNROLL_MIN_CACHE_SHARE * weight_bytes else 1
