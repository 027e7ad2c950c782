"""Splitting texts into sentences for translation, and joining them back.

A model trained in minutes on short pairs (software messages: median 4
words) translates a paragraph of three sentences far worse than the three
sentences one by one: it drops, mixes or repeats clauses once the input is
longer than most of what it saw. Translated one by one and joined back,
the multi-sentence texts of the real-text benchmark went from chrF 52.7 to
60.5 held out (benchmarks/RESULTS.md, "Sentences one by one"). Translation
toolkits split before translating for the same reason (argos-translate,
the OpenNMT and Marian servers).

The rule is small and conservative, with no model of its own: a text is
cut after `.`, `!`, `?` or `…` (closing quotes or brackets may follow) and
white space, before an upper-case letter, a digit, or an opening quote or
bracket, and never after a known abbreviation ("e.g.", "Dr.", "etc.") or a
single letter ("J. Smith"). A text without such a boundary stays whole, so
one-sentence inputs translate exactly as before, and the white space
between sentences is kept as it was. The rule is TensorFlow string ops
(RE2), so the same split runs in Python (`xformer translate`), inside the
SavedModel (TF Serving) and in an app around the TFLite file.
"""

import tensorflow as tf

# Abbreviations after which a full stop does not end an English sentence
# (compared case-insensitively, without the final stop).
ABBREVIATIONS = (
    "e.g", "i.e", "etc", "vs", "cf", "al", "approx", "dr", "mr", "mrs", "ms", "prof",
    "st", "no", "nos", "fig", "figs", "eq", "vol", "inc", "ltd", "co", "corp", "jr", "sr",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
)

# Marks the cuts inside the string ops; a text that already holds it is
# left whole rather than cut at the wrong places.
_MARK = "\x1f"
_SPACE = r"\s\x{00a0}\x{2000}-\x{200a}\x{202f}\x{205f}\x{3000}"
_CLOSE = r"\"'\x{00bb}\x{201d}\x{2019})\]"
_OPEN = r"\"'\x{00ab}\x{201c}\x{2018}(\["
# terminal punctuation + closing marks | white space | a sentence's first character
_BOUNDARY = (rf"([.!?\x{{2026}}][{_CLOSE}]*)([{_SPACE}]+)"
             rf"([A-Z\x{{00c0}}-\x{{00de}}0-9{_OPEN}])")
_ABBREVIATIONS = "|".join(a.replace(".", r"\.") for a in ABBREVIATIONS)
_ABBREVIATION = (rf"(?s)(?:.*[{_SPACE}])?[{_OPEN}]*(?i:{_ABBREVIATIONS}|\pL)"
                 rf"\.[{_CLOSE}]*")


def _as_strings(texts):
    # Not `spans._as_strings`: that one transcodes invalid UTF-8 to U+FFFD,
    # and a split must give the texts back byte for byte.
    texts = tf.convert_to_tensor(texts)
    if texts.dtype != tf.string or texts.shape.rank != 1:
        raise ValueError(
            "split_sentences takes a 1-D batch of strings (a list of str or a "
            f"tf.string tensor of shape [batch]); got dtype {texts.dtype.name} and "
            f"shape {texts.shape}.")
    return texts


def split_sentences(texts):
    """Splits each text of a batch into its sentences.

    Args:
        texts: a list of `str` or a 1-D `tf.string` tensor.

    Returns:
        `(sentences, separators)`: `tf.RaggedTensor`s of strings, shapes
        `[batch, (sentences)]` and `[batch, (sentences - 1)]`: the white
        space found between each two sentences. `join_sentences(sentences,
        separators)` gives the texts back, byte for byte.
    """
    texts = _as_strings(texts)
    marked = tf.strings.regex_replace(texts, _BOUNDARY, rf"\1{_MARK}\2{_MARK}\3")
    # Pieces alternate: sentence, white space, sentence, ..., sentence. A
    # text that holds the mark itself stays one piece.
    has_mark = tf.strings.regex_full_match(texts, f"(?s).*{_MARK}.*")
    pieces = tf.strings.split(tf.where(has_mark, "", marked), _MARK)
    whole = tf.where(has_mark)
    pieces = pieces.with_flat_values(tf.tensor_scatter_nd_update(
        pieces.flat_values, tf.expand_dims(tf.gather(pieces.row_starts(), whole[:, 0]), 1),
        tf.gather_nd(texts, whole)))
    parts, spaces = pieces[:, ::2], pieces[:, 1::2]
    # A cut after an abbreviation or an initial is undone: that white space
    # goes back into the sentence. `keep[j]`: the cut after part j stands.
    keep = tf.logical_not(tf.strings.regex_full_match(parts.flat_values, _ABBREVIATION))
    rows = parts.value_rowids()
    index = tf.range(tf.size(keep, out_type=tf.int64))
    last = tf.equal(index, tf.gather(parts.row_limits(), rows) - 1)
    keep = tf.logical_and(keep, tf.logical_not(last))
    # Part j belongs to sentence (cuts that stand before it, over the whole
    # batch) + (its row): each row's last sentence ends without a cut.
    part_sentence = tf.cumsum(tf.cast(keep, tf.int64), exclusive=True) + rows
    sentence_counts = tf.math.unsorted_segment_sum(
        tf.cast(keep, tf.int64), rows, parts.nrows()) + 1
    # The white space after each part ("" after a row's last); where the cut
    # is undone it stays glued to its part, and the parts of a sentence are
    # joined in order.
    space_after = tf.tensor_scatter_nd_update(
        tf.fill(tf.shape(keep), ""), tf.where(tf.logical_not(last)), spaces.flat_values)
    glued = tf.strings.join([parts.flat_values, tf.where(keep, "", space_after)])
    flat_sentences = tf.strings.unsorted_segment_join(
        glued, part_sentence, tf.reduce_sum(sentence_counts))
    sentences = tf.RaggedTensor.from_row_lengths(flat_sentences, sentence_counts)
    separators = tf.RaggedTensor.from_row_lengths(
        tf.boolean_mask(space_after, keep), sentence_counts - 1)
    return sentences, separators


def join_sentences(sentences, separators):
    """The inverse of `split_sentences`, on translated sentences.

    Args:
        sentences: `tf.RaggedTensor` `[batch, (sentences)]` of strings.
        separators: `tf.RaggedTensor` `[batch, (sentences - 1)]`, as
            `split_sentences` returned them.

    Returns:
        A `[batch]` `tf.string` tensor: each row's sentences joined by its
        separators.
    """
    counts = sentences.row_lengths()
    expected = tf.maximum(counts - 1, 0)
    tf.debugging.assert_equal(
        separators.row_lengths(), expected,
        message="join_sentences needs one separator between each two sentences "
                "of a row (the separators split_sentences returned).")
    padded = tf.concat([separators, tf.RaggedTensor.from_row_lengths(
        tf.fill(tf.shape(counts), ""), tf.ones_like(counts))], axis=1)
    joined = sentences.with_flat_values(
        tf.strings.join([sentences.flat_values, padded.flat_values]))
    return tf.strings.reduce_join(joined, axis=1)


def translate_by_sentence(translate, texts):
    """`translate` (a function from a 1-D batch of strings to a 1-D batch of
    strings, e.g. a SavedModel signature's) applied sentence by sentence:
    the texts are split, all their sentences translated as one batch, and
    the translations joined with the original white space."""
    sentences, separators = split_sentences(texts)
    translated = translate(sentences.flat_values)
    return join_sentences(sentences.with_flat_values(translated), separators)
