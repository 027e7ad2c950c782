"""SavedModel export: strings in, strings out, for TF Serving."""

import keras
import tensorflow as tf

from keras_xformer.data import encode_source
from keras_xformer.decoding.search import greedy_search
from keras_xformer.export._checks import check_export_args
from keras_xformer.text import sentences as sentence_split


def export_saved_model(path, model, source_tokenizer, target_tokenizer,
                       max_source_length, max_target_length, span_protector=None,
                       split_sentences=False):
    """Writes a SavedModel whose `serving_default` signature translates text.

    Input `text` (`tf.string`, `[None]`) to output `translation`
    (`tf.string`, `[None]`). Tokenization (TensorFlow Text), the
    XLA-compiled cached greedy decoding and detokenization all run inside the
    graph, so it loads with `tf.saved_model.load` (or TF Serving) in a process
    that has `tensorflow` and `tensorflow_text` but not `keras_xformer`.
    Inputs longer than `max_source_length` word pieces are truncated;
    empty strings and invalid UTF-8 give a (possibly empty) translation.

    Args:
        path: the SavedModel folder to write.
        model: a trained `keras_xformer.models.Transformer`.
        source_tokenizer, target_tokenizer: the `WordPieceTokenizer`s the
            model was trained with.
        max_source_length: source word pieces kept (including [END]).
        max_target_length: target tokens generated at most.
        span_protector: the `keras_xformer.text.spans.SpanProtector` the
            model was trained with, or None. Its masking (before
            tokenization) and unmasking (after detokenization) are
            TensorFlow ops inside the serving function, the same ops
            `xformer translate` runs in Python.
        split_sentences: translate a text of several sentences sentence by
            sentence and join the translations with the text's own white
            space (`keras_xformer.text.sentences`, TensorFlow string ops in
            the graph): for models trained on short sentences, as `xformer
            train --data` exports them. `max_source_length` then limits
            each sentence, not the whole text.

    Example:

    ```python
    export_saved_model("serving", model, src_tok, tgt_tok, 32, 40)
    translate = tf.saved_model.load("serving").signatures["serving_default"]
    translate(text=tf.constant(["twenty-one"]))["translation"]
    ```
    """
    check_export_args(model, max_source_length=max_source_length,
                      max_target_length=max_target_length)
    decode = tf.function(
        lambda ids: greedy_search(model, ids, max_target_length), jit_compile=True
    )

    def serve(text):
        if split_sentences:
            return {"translation": sentence_split.translate_by_sentence(translate, text)}
        return {"translation": translate(text)}

    def translate(text):
        spans = None
        if span_protector is not None:
            text, spans = span_protector.protect(text)
        ids = encode_source(source_tokenizer, text, max_source_length)
        translation = target_tokenizer.detokenize(decode(ids))
        if span_protector is not None:
            translation = span_protector.restore(translation, spans)
        return translation

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(source_tokenizer)
    archive.track(target_tokenizer)
    archive.add_endpoint(
        "serving_default",
        serve,
        input_signature=[tf.TensorSpec([None], tf.string, name="text")],
    )
    archive.write_out(path, verbose=False)
    return path
