"""TFLite export: the whole greedy decoding loop in one `.tflite` file."""

import keras
import tensorflow as tf

from keras_xformer.decoding.search import greedy_search
from keras_xformer.export._checks import check_export_args

QUANTIZATIONS = (None, "dynamic_int8", "float16")


def export_tflite(path, model, source_length, max_target_length, quantization=None):
    """Writes a `.tflite` file mapping source ids to generated target ids.

    Signature `serving_default`: input `source_ids` (`int32 [1, source_length]`,
    0-padded) to output `target_ids` (`int32 [1, max_target_length]`: the
    tokens after [START], [END] included, then 0s). The encoder runs once and
    the decoder steps use key/value caches inside one TFLite `WHILE` loop,
    with TFLite builtin ops only (no Flex / SELECT_TF_OPS), so the file runs
    in `ai_edge_litert.interpreter.Interpreter` as on a phone. Unquantized it
    matches `model.generate` token for token.

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

    Args:
        path: the `.tflite` file to write.
        model: a `keras_xformer.models.Transformer`.
        source_length: the fixed source length `S`.
        max_target_length: target tokens generated at most.
        quantization: `None`, `"dynamic_int8"` (int8 weights, float
            activations: about a quarter of the float file) or `"float16"`
            (float16 weights).

    Returns:
        The size of the file in bytes.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be one of {QUANTIZATIONS}; received {quantization!r}."
        )
    check_export_args(model, source_length=source_length,
                      max_target_length=max_target_length)
    if any(layer.quantization_mode for layer in model._flatten_layers()):
        # TFLite builtins take no int8 activations (Keras' int8 matmuls):
        # export what the quantized weights compute, in float, and let
        # `quantization` re-quantize it the TFLite way.
        from keras_xformer.layers._quantization import dequantized_copy

        model = dequantized_copy(model)
    variables = list(model.variables)
    weights = [v.numpy() for v in variables]

    @tf.function(input_signature=[
        tf.TensorSpec([1, source_length], tf.int32, name="source_ids")
    ])
    def translate(source_ids):
        # The weights enter the graph as constants, before the loop, and the
        # loop body sees plain tensors: variables read inside a TFLite WHILE
        # body fail conversion ("Failed to functionalize Control Flow V1
        # ops"), and kept as TFLite resource variables they read as zeros.
        values = [tf.constant(w) for w in weights]
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            ids = greedy_search(model, source_ids, max_target_length)
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
