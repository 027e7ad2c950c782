"""Protected spans: placeholders, names and identifiers that a translation
must copy verbatim ("placeholders", as MT toolkits call them).

A source's spans are replaced by numbered sentinel characters (Unicode
private-use characters U+E000, U+E001, ... in order of first appearance)
before tokenization; the model learns to emit the sentinel, and the
translation gets each sentinel's span back. The masking and unmasking are
TensorFlow ops, so Python, `tf.data` and the exported SavedModel run the
same code and cannot disagree.
"""

import json

import tensorflow as tf
import tensorflow_text as tf_text

# The kinds of span that the training split of the catalogs corpus copies
# verbatim in >= 90% of cases (benchmarks/spans.py, benchmarks/RESULTS.md),
# most specific first: at one position the first alternative that matches
# wins (RE2 and Python's `re` alike). Plain ASCII syntax, so Python's `re`
# (with re.ASCII) reads it as RE2 does.
SPAN_KINDS = (
    ("double brace {{...}}", r"\{\{[^{}]*\}\}"),
    ("python-format %(name)s", r"%\([A-Za-z0-9_.]+\)[-#0+]*[0-9]*(?:\.[0-9]+)?[diouxXeEfFgGcrsa]"),
    ("dollar ${name} $name", r"\$\{[A-Za-z0-9_.]+\}|\$[A-Za-z_][A-Za-z0-9_]*"),
    ("brace {0} {name} {}", r"\{[A-Za-z0-9_.:!\[\]]*\}"),
    ("tag <b> </a> <br/>", r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>"),
    ("HTML entity &amp;", r"&(?:[A-Za-z]+|#[0-9]+);"),
    ("printf %s %d %r %1$s %-5.2f",
     r"%(?:[0-9]+\$)?[-#0+']*[0-9]*(?:\.[0-9]+)?(?:hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGcsrap]"),
    ("--long-option", r"--[A-Za-z0-9][A-Za-z0-9_-]*(?:=[A-Za-z0-9_]+)?"),
    ("call name()", r"\b[A-Za-z_][A-Za-z0-9_.]*\(\)"),
    ("ALL-CAPS with _ (TRAC_ENV)", r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b"),
    ("identifier with _", r"\b_*[A-Za-z0-9]+(?:_+[A-Za-z0-9]+)+_*\b"),
    ("camelCase", r"\b[a-z]+[A-Z][A-Za-z0-9]*\b"),
    ("version 1.2.3", r"\b[0-9]+\.[0-9]+(?:\.[0-9]+)+\b"),
    ("number", r"\b[0-9]+(?:[.,][0-9]+)*\b"),
)
DEFAULT_PATTERN = "|".join(f"(?:{pattern})" for _, pattern in SPAN_KINDS)
DEFAULT_MAX_SPANS = 16

SENTINEL_BASE = 0xE000
# The whole block is reserved: a user's own character in it would read as
# a sentinel, so it is removed from inputs. Its last two code points mark
# the matches while masking.
_BLOCK = r"[\x{E000}-\x{E0FF}]"
_OPEN, _CLOSE = "\ue0fe", "\ue0ff"
_MARKED = r"\x{E0FE}[^\x{E0FF}]*\x{E0FF}"
_MAX_SENTINELS = 0xFE


def sentinels(max_spans=DEFAULT_MAX_SPANS):
    """The sentinel characters, `["\\ue000", "\\ue001", ...]`: give them to
    the tokenizer's training (`user_defined_symbols`) so each is one token."""
    return [chr(SENTINEL_BASE + i) for i in range(max_spans)]


def _as_strings(strings, name):
    if isinstance(strings, (str, bytes)):
        raise ValueError(f"`{name}` must be a list or vector of strings, not one string: "
                         f"pass [{strings!r}].")
    if not isinstance(strings, tf.Tensor):
        if not all(isinstance(x, (str, bytes)) for x in strings):
            raise ValueError(f"`{name}` must hold strings. Received: {list(strings)[:5]!r}")
        strings = tf.constant(list(strings), tf.string, shape=[len(strings)])
    if strings.dtype != tf.string:
        raise ValueError(f"`{name}` must hold strings. Received dtype: {strings.dtype}")
    if strings.shape.rank is not None and strings.shape.rank != 1:
        raise ValueError(f"`{name}` must be a vector of strings. Received shape: "
                         f"{strings.shape}")
    # Invalid UTF-8 becomes U+FFFD, as the tokenizers do: RE2 needs UTF-8.
    return tf.strings.unicode_transcode(strings, "UTF-8", "UTF-8", errors="replace",
                                        replacement_char=0xFFFD)


class SpanProtector(tf.Module):
    """Masks the spans a translation must copy, and puts them back.

    `protect` replaces each distinct span matched by `pattern` with a
    sentinel character (the first distinct span U+E000, the next U+E001,
    ... up to `max_spans`; an identical span repeated shares its sentinel,
    spans beyond `max_spans` stay text). A source that is one span and
    nothing else is left as it is: such sources (message ids such as
    `label_contact_phone`) are translated, not copied. `restore` replaces
    each sentinel in a translation with its span and drops sentinels that
    have none. Characters U+E000-U+E0FF in an input are removed (they would
    read as sentinels). Both are TensorFlow ops: they run eagerly, in
    `tf.data` and inside an exported SavedModel.

    Args:
        pattern: an RE2 regular expression (TensorFlow's syntax) of the
            spans to protect; it must not match the empty string.
        max_spans: sentinels per sentence, 1 to 254.

    Example:

    >>> protector = SpanProtector()
    >>> masked, spans = protector.protect(["Delete %(name)s from %(name)s?"])
    >>> masked.numpy()[0].decode() == "Delete \\ue000 from \\ue000?"
    True
    >>> protector.restore(["Supprimer \\ue000 ?"], spans).numpy()
    array([b'Supprimer %(name)s ?'], dtype=object)
    """

    def __init__(self, pattern=DEFAULT_PATTERN, max_spans=DEFAULT_MAX_SPANS, name=None):
        super().__init__(name=name)
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"`pattern` must be a non-empty string. Received: {pattern!r}")
        if (not isinstance(max_spans, int) or isinstance(max_spans, bool)
                or not 1 <= max_spans <= _MAX_SENTINELS):
            raise ValueError(f"`max_spans` must be an int from 1 to {_MAX_SENTINELS}. "
                             f"Received: {max_spans!r}")
        try:
            matches_empty = bool(tf.strings.regex_full_match("", pattern).numpy())
        except tf.errors.InvalidArgumentError as error:
            raise ValueError(f"`pattern` is not a valid RE2 regular expression: "
                             f"{error.message}") from None
        if matches_empty:
            raise ValueError(f"`pattern` must not match the empty string: {pattern!r}")
        self.pattern = pattern
        self.max_spans = max_spans
        self._sentinels = tf.constant(sentinels(max_spans))

    def get_config(self):
        return {"pattern": self.pattern, "max_spans": self.max_spans}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def protect(self, strings):
        """Masks the spans of a batch of strings.

        Args:
            strings: a `(batch,)` `tf.string` tensor or a list of `str`.

        Returns:
            `(masked, spans)`: the `(batch,)` masked strings and a
            `(batch, None)` ragged `tf.string` tensor whose row `i` holds the
            spans of `strings[i]`, the one of sentinel `j` at index `j`.
        """
        strings = _as_strings(strings, "strings")
        clean = tf.strings.regex_replace(strings, _BLOCK, "")
        marked = tf.strings.regex_replace(clean, self.pattern, _OPEN + r"\0" + _CLOSE)
        pieces, _, _ = tf_text.regex_split_with_offsets(marked, _MARKED, _MARKED)
        flat = pieces.flat_values
        rows = pieces.value_rowids()
        is_span = tf.strings.regex_full_match(flat, r"(?s)\x{E0FE}.*\x{E0FF}")
        # The markers are 3 bytes each in UTF-8.
        length = tf.strings.length(flat)
        text = tf.strings.substr(flat, tf.where(is_span, 3, 0),
                                 tf.where(is_span, length - 6, length))
        # A source that is a single span and blanks is left as text.
        blank = tf.strings.regex_full_match(flat, r"\s*")
        nrows = pieces.nrows()
        span_count = tf.math.unsorted_segment_sum(tf.cast(is_span, tf.int32), rows, nrows)
        other = tf.math.unsorted_segment_sum(
            tf.cast(tf.logical_not(is_span | blank), tf.int32), rows, nrows)
        whole = tf.gather(tf.logical_and(span_count == 1, other == 0), rows)
        is_span = tf.logical_and(is_span, tf.logical_not(whole))

        # Distinct spans in order of first appearance, row by row: a small
        # (batch, pieces, pieces) comparison, pieces being a sentence's.
        dense_text = pieces.with_flat_values(text).to_tensor("")
        dense_span = pieces.with_flat_values(is_span).to_tensor(False)
        width = tf.shape(dense_text)[1]
        same = tf.logical_and(
            tf.equal(dense_text[:, :, None], dense_text[:, None, :]),
            tf.logical_and(dense_span[:, :, None], dense_span[:, None, :]))
        earlier = tf.linalg.band_part(tf.ones([width, width], tf.bool), -1, 0)
        earlier = tf.logical_and(earlier, tf.logical_not(tf.eye(width, dtype=tf.bool)))
        first = tf.logical_and(dense_span, tf.logical_not(
            tf.reduce_any(tf.logical_and(same, earlier[None]), axis=2)))
        # (argmax would fail on a batch with no pieces at all.)
        first_index = tf.reduce_min(
            tf.where(same, tf.range(width)[None, None, :], width), axis=2)
        first_index = tf.minimum(first_index, tf.maximum(width - 1, 0))
        rank = tf.cumsum(tf.cast(first, tf.int32), axis=1) - 1
        rank = tf.gather(rank, first_index, batch_dims=1)
        columns = tf.cast(tf.range(tf.size(rows, out_type=tf.int64))
                          - tf.gather(pieces.row_splits, rows), tf.int32)
        index = tf.stack([tf.cast(rows, tf.int32), columns], axis=1)
        rank = tf.gather_nd(rank, index)
        first = tf.gather_nd(first, index)
        protected = tf.logical_and(is_span, rank < self.max_spans)
        sentinel = tf.gather(self._sentinels, tf.clip_by_value(rank, 0, self.max_spans - 1))
        out = tf.where(protected, sentinel, text)
        masked = tf.strings.unsorted_segment_join(out, rows, num_segments=nrows)
        keep = tf.logical_and(protected, first)
        spans = tf.RaggedTensor.from_value_rowids(
            tf.boolean_mask(text, keep), tf.boolean_mask(rows, keep), nrows=nrows)
        return masked, spans

    def restore(self, strings, spans):
        """Replaces the sentinels of a batch of translations with their spans.

        Args:
            strings: a `(batch,)` `tf.string` tensor or a list of `str` (the
                translations of the masked sources).
            spans: the `spans` that `protect` returned for those sources: a
                `(batch, None)` ragged `tf.string` tensor or a list of lists
                of `str`.

        Returns:
            A `(batch,)` `tf.string` tensor: sentinels with a span give it
            back, the others are dropped.
        """
        return _restore(strings, spans)

    def protect_target(self, target, spans):
        """A training target with each occurrence of a source span replaced
        by that span's sentinel, longest spans first (so a span inside a
        longer one does not break it). Python `str` in, `str` out: targets
        are masked once, when the training data is prepared.

        Args:
            target: a `str`.
            spans: the source's spans (a row of `protect`'s `spans`, as
                `str` or `bytes`).
        """
        import re

        target = re.sub("[\ue000-\ue0ff]", "", target)
        spans = [s.decode("utf-8") if isinstance(s, bytes) else s for s in spans]
        for number in sorted(range(len(spans)), key=lambda i: -len(spans[i])):
            target = target.replace(spans[number], chr(SENTINEL_BASE + number))
        return target

    def protect_pairs(self, sources, targets, batch_size=4096):
        """`(masked_sources, masked_targets)` lists of `str` for training."""
        if len(sources) != len(targets):
            raise ValueError(f"{len(sources)} sources but {len(targets)} targets.")
        masked_sources, masked_targets = [], []
        for i in range(0, len(sources), batch_size):
            masked, spans = self.protect(list(sources[i : i + batch_size]))
            masked_sources += [m.decode("utf-8") for m in masked.numpy()]
            masked_targets += [self.protect_target(t, row) for t, row in
                               zip(targets[i : i + batch_size], spans.to_list())]
        return masked_sources, masked_targets


def protect(texts, pattern=DEFAULT_PATTERN, max_spans=DEFAULT_MAX_SPANS):
    """Masks the protected spans of a list of `str` (see `SpanProtector`).

    For the TFLite export, which takes ids: protect the source, encode the
    masked text, run the interpreter, detokenize, then `restore`.

    Returns:
        `(masked, spans)`: a list of `str` and a list of lists of `str`.

    Example:

    >>> masked, spans = protect(["Open %s in TRAC_ENV"])
    >>> spans
    [['%s', 'TRAC_ENV']]
    >>> restore(["Ouvrir \\ue000 dans \\ue001"], spans)
    ['Ouvrir %s dans TRAC_ENV']
    """
    if isinstance(texts, (str, bytes)):
        raise ValueError(f"`texts` must be a list of strings, not one string: pass [{texts!r}].")
    masked, spans = SpanProtector(pattern, max_spans).protect(list(texts))
    return ([m.decode("utf-8") for m in masked.numpy()],
            [[s.decode("utf-8") for s in row] for row in spans.to_list()])


def restore(texts, spans):
    """Puts the spans `protect` returned back into translations (a list of
    `str`); returns a list of `str`."""
    if isinstance(texts, (str, bytes)):
        raise ValueError(f"`texts` must be a list of strings, not one string: pass [{texts!r}].")
    return [t.decode("utf-8") for t in _restore(list(texts), spans).numpy()]


def _restore(strings, spans):
    """The TensorFlow ops of `SpanProtector.restore` (it needs no pattern)."""
    strings = _as_strings(strings, "strings")
    if not isinstance(spans, tf.RaggedTensor):
        if isinstance(spans, (str, bytes)) or not all(
                isinstance(row, (list, tuple)) for row in spans):
            raise ValueError("`spans` must be the ragged tensor `protect` returned, or "
                             "a list of lists of strings (one list per text).")
        spans = tf.ragged.constant([list(row) for row in spans], dtype=tf.string,
                                   ragged_rank=1) if len(spans) else (
            tf.RaggedTensor.from_row_lengths(tf.constant([], tf.string),
                                             tf.constant([], tf.int64)))
    if spans.dtype != tf.string or spans.shape.rank != 2:
        raise ValueError("`spans` must be a (batch, None) ragged tensor of strings. "
                         f"Received: {spans}")
    static = (strings.shape[0], spans.shape[0])
    if None not in static and static[0] != static[1]:
        raise ValueError(f"`strings` has {static[0]} rows but `spans` {static[1]}: they must "
                         "have one row per text each.")
    tf.debugging.assert_equal(
        tf.shape(strings, out_type=tf.int64)[0], spans.nrows(),
        message="`strings` and `spans` must have one row per text each.")
    pieces, _, _ = tf_text.regex_split_with_offsets(strings, _BLOCK, _BLOCK)
    flat = pieces.flat_values
    rows = pieces.value_rowids()
    is_sentinel = tf.strings.regex_full_match(flat, _BLOCK)
    # Padded to width 1, so that a batch without any piece still slices.
    codes = tf.strings.unicode_decode(flat, "UTF-8")[:, :1].to_tensor(0, shape=[None, 1])[:, 0]
    number = tf.cast(codes, tf.int64) - SENTINEL_BASE
    splits = tf.cast(spans.row_splits, tf.int64)
    available = tf.gather(splits[1:] - splits[:-1], rows)
    known = tf.logical_and(is_sentinel,
                           tf.logical_and(number >= 0, number < available))
    values = tf.concat([spans.flat_values, [""]], 0)
    where = tf.where(known, tf.gather(splits, rows) + number,
                     tf.shape(values, out_type=tf.int64)[0] - 1)
    out = tf.where(is_sentinel, tf.gather(values, where), flat)
    return tf.strings.unsorted_segment_join(out, rows, num_segments=pieces.nrows())


def save_settings(protector):
    """The JSON-able settings of a protector (or None), for tokenizer.json."""
    return None if protector is None else protector.get_config()


def from_settings(settings):
    """A `SpanProtector` from `tokenizer.json`'s `"spans"` entry, or None
    (folders trained without protected spans, or before them)."""
    if not settings:
        return None
    if isinstance(settings, str):
        settings = json.loads(settings)
    return SpanProtector(**settings)
