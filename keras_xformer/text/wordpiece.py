"""A WordPiece tokenizer over TensorFlow Text that round-trips its text.

Pre-tokenization splits the text on whitespace and isolates every punctuation
or symbol character (Unicode categories P and S). WordPiece then splits each
piece into subwords from the vocabulary. A piece glued to the one before it
(no whitespace between them, as in "vingt-deux" or "thousand,") is encoded with
the WordPiece continuation form (`##`) of its first subword, so the usual
WordPiece detokenization (join `##` pieces, a space before every other token)
restores the exact text: `detokenize(tokenize(s)) == s` for any `s` that is
lower case (or `lower_case=False`), NFC-normalized, uses single spaces between
words and has no [UNK]. Accents are never stripped.
"""

import collections
import heapq
import os

import tensorflow as tf
import tensorflow_text as tf_text

RESERVED_TOKENS = ("[PAD]", "[UNK]", "[START]", "[END]")
PAD_ID, UNK_ID, START_ID, END_ID = 0, 1, 2, 3
SUFFIX_INDICATOR = "##"
MAX_BYTES_PER_WORD = 100

# Whitespace (ASCII and Unicode separators) splits and is dropped; every
# punctuation or symbol character is a piece of its own.
# The private-use block U+E000-U+E0FF holds the sentinels of protected
# spans (keras_xformer.text.spans): each is a piece of its own too.
_DELIMITER_PATTERN = r"[\s\p{Z}]+|[\p{P}\p{S}\x{E000}-\x{E0FF}]"
_KEEP_DELIMITER_PATTERN = r"[\p{P}\p{S}\x{E000}-\x{E0FF}]"


def _pretokenize(strings, lower_case):
    """Splits a `(batch,)` string tensor into pieces.

    Returns:
        `(pieces, attached)`: a `(batch, None)` ragged string tensor of pieces
        and a flat bool tensor (one per piece) that is True where the piece
        follows the previous piece of its row with no whitespace between.
    """
    strings = tf.strings.unicode_transcode(
        strings,
        input_encoding="UTF-8",
        output_encoding="UTF-8",
        errors="replace",
        replacement_char=0xFFFD,
    )
    strings = tf_text.normalize_utf8(strings, "NFC")
    if lower_case:
        strings = tf.strings.lower(strings, encoding="utf-8")
    strings = tf.strings.regex_replace(strings, r"\p{Cf}", "")
    strings = tf.strings.regex_replace(strings, r"\p{Cc}", " ")
    pieces, begins, ends = tf_text.regex_split_with_offsets(
        strings, _DELIMITER_PATTERN, _KEEP_DELIMITER_PATTERN
    )
    rows = pieces.value_rowids()
    begins = begins.flat_values
    ends = ends.flat_values
    count = tf.shape(begins)[0]
    first_of_row = tf.concat([[True], tf.not_equal(rows[1:], rows[:-1])], 0)
    first_of_row = first_of_row[:count]  # also right for zero pieces
    previous_end = tf.concat([tf.constant([-1], ends.dtype), ends[:-1]], 0)
    previous_end = previous_end[:count]
    attached = tf.logical_and(
        tf.logical_not(first_of_row), tf.equal(begins, previous_end)
    )
    return pieces, attached


def _to_string_tensor(strings):
    if isinstance(strings, (str, bytes)):
        return tf.constant(strings, tf.string)
    if isinstance(strings, (list, tuple)) and not strings:
        return tf.constant([], tf.string)
    return tf.convert_to_tensor(strings, tf.string)


class WordPieceTokenizer(tf.Module):
    """WordPiece tokenizer with the Transformer's reserved ids.

    A `tf.Module` over `tensorflow_text.FastWordpieceTokenizer`: `tokenize`
    and `detokenize` run eagerly, inside `tf.data.Dataset.map`, inside a
    `tf.function` and inside an exported SavedModel (the loading process
    needs `import tensorflow_text` for the ops, not this package).

    The vocabulary starts with the reserved tokens
    `[PAD]=0, [UNK]=1, [START]=2, [END]=3`. Text is NFC-normalized, lower-cased
    when `lower_case` (accents are kept), split on whitespace, and every
    punctuation or symbol character becomes a piece of its own. A piece with
    no whitespace before it (as "-" and "deux" in "vingt-deux") is encoded
    with `##` continuation tokens, so `detokenize` restores the spacing
    exactly: "vingt-deux" comes back as "vingt-deux", "thousand, three" as
    "thousand, three". Runs of whitespace come back as one space; invalid
    UTF-8 bytes become U+FFFD (an [UNK] unless in the vocabulary); a word
    longer than 100 bytes is one [UNK].

    `lower_case` is not stored in the vocabulary file: pass the same value
    to `WordPieceTokenizer.load` as to `train` (both default to True).

    Args:
        vocabulary: a list of tokens, or the path of a vocabulary file with
            one token per line. It must start with
            `[PAD]`, `[UNK]`, `[START]`, `[END]`.
        lower_case: whether to lower-case the text before tokenizing.
        name: the `tf.Module` name.

    Example:

    >>> tokenizer = WordPieceTokenizer.train(
    ...     ["vingt-deux", "trente et un"], vocabulary_size=100)
    >>> ids = tokenizer.tokenize(["vingt-deux"], sequence_length=16,
    ...                          add_start_end=True)
    >>> tokenizer.detokenize(ids).numpy()
    array([b'vingt-deux'], dtype=object)
    """

    def __init__(self, vocabulary, lower_case=True, name=None):
        super().__init__(name=name)
        if isinstance(vocabulary, (str, os.PathLike)):
            vocabulary = _read_vocabulary(vocabulary)
        vocabulary = _check_vocabulary(vocabulary)
        self._lower_case = bool(lower_case)
        # Kept out of tf.Module's attribute tracking (plain Python data).
        self.__dict__["_tokens"] = tuple(vocabulary)
        self.__dict__["_ids"] = {t: i for i, t in enumerate(vocabulary)}
        self._vocabulary_tensor = tf.constant(vocabulary, tf.string)
        self._tokenizer = tf_text.FastWordpieceTokenizer(
            vocab=list(vocabulary),
            suffix_indicator=SUFFIX_INDICATOR,
            max_bytes_per_word=MAX_BYTES_PER_WORD,
            token_out_type=tf.int32,
            unknown_token=RESERVED_TOKENS[UNK_ID],
            no_pretokenization=True,
        )
        # Tokenizes a piece as the continuation of the previous one: its
        # vocabulary holds, for every "##x", both "x" and "##x", and
        # `_continuation_ids` maps its ids back to the ids of "##x".
        suffix_tokens = [RESERVED_TOKENS[UNK_ID]]
        suffix_ids = [UNK_ID]
        for token_id, token in enumerate(vocabulary):
            if token.startswith(SUFFIX_INDICATOR) and len(token) > len(
                SUFFIX_INDICATOR
            ):
                stripped = token[len(SUFFIX_INDICATOR):]
                if stripped.startswith(SUFFIX_INDICATOR):
                    continue
                suffix_tokens += [stripped, token]
                suffix_ids += [token_id, token_id]
        self._continuation_tokenizer = tf_text.FastWordpieceTokenizer(
            vocab=suffix_tokens,
            suffix_indicator=SUFFIX_INDICATOR,
            max_bytes_per_word=MAX_BYTES_PER_WORD,
            token_out_type=tf.int32,
            unknown_token=RESERVED_TOKENS[UNK_ID],
            no_pretokenization=True,
        )
        self._continuation_ids = tf.constant(suffix_ids, tf.int32)

    # ------------------------------------------------------------------
    # Vocabulary.

    @property
    def lower_case(self):
        """Whether text is lower-cased before tokenizing."""
        return self._lower_case

    @property
    def vocabulary(self):
        """The tokens, a list of `str` indexed by id."""
        return list(self._tokens)

    @property
    def vocabulary_size(self):
        """The number of tokens, reserved tokens included."""
        return len(self._tokens)

    @property
    def pad_id(self):
        return PAD_ID

    @property
    def unk_id(self):
        return UNK_ID

    @property
    def start_id(self):
        return START_ID

    @property
    def end_id(self):
        return END_ID

    def token_to_id(self, token):
        """The id of `token`; a `ValueError` if it is not in the vocabulary."""
        try:
            return self._ids[token]
        except KeyError:
            raise ValueError(
                f"Token {token!r} is not in the vocabulary."
            ) from None

    def id_to_token(self, token_id):
        """The token of `token_id`; a `ValueError` if out of range."""
        token_id = int(token_id)
        if not 0 <= token_id < len(self._tokens):
            raise ValueError(
                f"Id {token_id} is out of range: the vocabulary has "
                f"{len(self._tokens)} tokens."
            )
        return self._tokens[token_id]

    def save(self, path):
        """Writes the vocabulary file, one token per line (UTF-8).

        Args:
            path: the file to write.
        """
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for token in self._tokens:
                f.write(token + "\n")

    @classmethod
    def load(cls, path, lower_case=True):
        """Reads a tokenizer back from a vocabulary file.

        Args:
            path: a file written by `save` (one token per line).
            lower_case: as given to `train` or the constructor (the file does
                not record it).

        Returns:
            A `WordPieceTokenizer`.
        """
        return cls(_read_vocabulary(path), lower_case=lower_case)

    @classmethod
    def train(cls, texts, vocabulary_size, lower_case=True, min_frequency=10,
              user_defined_symbols=()):
        """Learns a WordPiece vocabulary from texts.

        The text is pre-tokenized exactly as `tokenize` does. Every character
        seen in `texts` gets a token (word-initial and `##` forms), so no
        training text tokenizes to [UNK]; the most frequent subwords (merged
        greedily by frequency, never across whitespace or punctuation) fill
        the rest up to `vocabulary_size`. The vocabulary is larger than
        `vocabulary_size` only when the characters alone need more.

        `tensorflow_text.tools.wordpiece_vocab.bert_vocab_from_dataset` is
        not used: it pre-tokenizes with BERT's `BasicTokenizer` (a
        vocabulary that would not match this pre-tokenizer) and its learner
        takes minutes on long compound words such as German number words.

        Args:
            texts: a list of `str`, or a `tf.data.Dataset` of strings
                (scalars or batches).
            vocabulary_size: the target number of tokens, reserved included.
            lower_case: whether to lower-case the text (also given to the
                returned tokenizer).
            min_frequency: subwords seen fewer times are not added (10, as
                the `lower_thresh` of TensorFlow Text's vocabulary learner;
                every character is added whatever its count).
            user_defined_symbols: single characters that are tokens of their
                own in both forms (word-initial and `##`), right after the
                reserved tokens, whether or not the text holds them: the
                sentinels of `keras_xformer.text.spans`, which the
                pre-tokenizer splits off as pieces of their own.

        Returns:
            A `WordPieceTokenizer`.

        Example:

        >>> tokenizer = WordPieceTokenizer.train(["one", "twenty-one"], 50)
        >>> tokenizer.vocabulary[:4]
        ['[PAD]', '[UNK]', '[START]', '[END]']
        """
        if int(vocabulary_size) != vocabulary_size or vocabulary_size < 1:
            raise ValueError(
                "`vocabulary_size` must be a positive integer. "
                f"Received: vocabulary_size={vocabulary_size}"
            )
        if int(min_frequency) != min_frequency or min_frequency < 1:
            raise ValueError(
                "`min_frequency` must be a positive integer. "
                f"Received: min_frequency={min_frequency}"
            )
        if isinstance(user_defined_symbols, str) or not all(
                isinstance(x, str) and len(x) == 1 and 0xE000 <= ord(x) <= 0xE0FF
                for x in user_defined_symbols):
            raise ValueError(
                "`user_defined_symbols` must be a list of single characters from "
                "U+E000-U+E0FF (the pre-tokenizer keeps only those as pieces of "
                f"their own). Received: {user_defined_symbols!r}")
        counts = collections.Counter()
        for batch in _string_batches(texts):
            pieces, attached = _pretokenize(batch, lower_case)
            counts.update(
                zip(pieces.flat_values.numpy().tolist(), attached.numpy().tolist())
            )
        word_counts = collections.Counter()
        for (piece, attached), count in counts.items():
            word_counts[(piece.decode("utf-8"), attached)] += count
        vocabulary = _learn_vocabulary(
            word_counts, int(vocabulary_size), int(min_frequency)
        )
        if user_defined_symbols:
            symbols = [t for x in user_defined_symbols for t in (x, SUFFIX_INDICATOR + x)]
            rest = [t for t in vocabulary[len(RESERVED_TOKENS):] if t not in set(symbols)]
            vocabulary = list(RESERVED_TOKENS) + symbols + rest
        return cls(vocabulary, lower_case=lower_case)

    # ------------------------------------------------------------------
    # Tokenizing.

    def tokenize(self, strings, sequence_length=None, add_start_end=False):
        """Turns strings into int32 token ids.

        Args:
            strings: a Python `str`, a list of `str`, or a `tf.string` tensor
                of rank 0 or 1.
            sequence_length: when given, the result is a dense
                `(batch, sequence_length)` tensor padded with 0 (`[PAD]`) and
                truncated to that length; else a `tf.RaggedTensor`.
            add_start_end: add `[START]` (2) before and `[END]` (3) after each
                sequence; truncation then keeps `[END]` as the last token.

        Returns:
            int32 ids: `(batch, sequence_length)` dense or `(batch, None)`
            ragged; a scalar input gives a rank-1 result.

        Example:

        >>> tokenizer = WordPieceTokenizer.train(["vingt-deux"], 20)
        >>> tokenizer.tokenize("vingt-deux", sequence_length=6,
        ...                    add_start_end=True).shape
        TensorShape([6])
        """
        _check_sequence_length(sequence_length, add_start_end)
        strings = _to_string_tensor(strings)
        rank = strings.shape.rank
        if rank is not None and rank > 1:
            raise ValueError(
                "`strings` must be a scalar or a vector of strings. "
                f"Received shape: {strings.shape}"
            )
        scalar = rank == 0
        strings = tf.reshape(strings, [-1])

        pieces, attached = _pretokenize(strings, self._lower_case)
        words = pieces.flat_values
        plain = self._tokenizer.tokenize(words)
        continued = self._continuation_tokenizer.tokenize(words)
        continued = continued.with_flat_values(
            tf.gather(self._continuation_ids, continued.flat_values)
        )
        # Fall back to the plain form when the vocabulary lacks the
        # continuation form (spacing is then lost, the word is not).
        plain_unknown = tf.reduce_any(tf.equal(plain, UNK_ID), axis=1)
        continued_unknown = tf.reduce_any(tf.equal(continued, UNK_ID), axis=1)
        use_continued = tf.logical_and(
            attached,
            tf.logical_not(
                tf.logical_and(continued_unknown, tf.logical_not(plain_unknown))
            ),
        )
        count = tf.shape(words, out_type=tf.int64)[0]
        index = tf.range(count, dtype=tf.int64)
        chosen = tf.gather(
            tf.concat([plain, continued], axis=0),
            tf.where(use_continued, index + count, index),
        )
        ids = tf.RaggedTensor.from_row_splits(
            chosen, pieces.row_splits, validate=False
        ).merge_dims(1, 2)

        return _finish_ids(ids, sequence_length, add_start_end, scalar)

    def detokenize(self, ids):
        """Turns token ids back into strings.

        `[PAD]`, `[START]`, `[END]` and everything after the first `[END]` are
        dropped; `[UNK]` stays visible as "[UNK]". `##` tokens are glued to
        the token before them; other tokens are separated by one space. Ids
        out of the vocabulary's range read as `[UNK]`.

        Args:
            ids: integer ids, `(batch, length)` dense (tensor or NumPy array)
                or `(batch, None)` ragged; a rank-1 input is one sequence.

        Returns:
            A `(batch,)` `tf.string` tensor (a scalar for a rank-1 input).

        Example:

        >>> tokenizer = WordPieceTokenizer.train(["dix-sept"], 20)
        >>> ids = tokenizer.tokenize(["dix-sept"], sequence_length=12)
        >>> tokenizer.detokenize(ids).numpy()
        array([b'dix-sept'], dtype=object)
        """
        kept, scalar = _keep_before_end(ids, len(self._tokens))
        tokens = tf.gather(self._vocabulary_tensor, kept.flat_values)
        continuation = tf.strings.regex_full_match(tokens, "(?s)##.+")
        pieces = tf.where(
            continuation,
            tf.strings.regex_replace(tokens, "^##", ""),
            tf.strings.join([" ", tokens]),
        )
        text = tf.strings.unsorted_segment_join(
            pieces, kept.value_rowids(), num_segments=kept.nrows()
        )
        text = tf.strings.regex_replace(text, "^ ", "")
        if scalar:
            text = text[0]
        return text

    def __call__(self, strings, sequence_length=None, add_start_end=False):
        """Same as `tokenize`."""
        return self.tokenize(
            strings, sequence_length=sequence_length, add_start_end=add_start_end
        )


def _check_sequence_length(sequence_length, add_start_end):
    if sequence_length is None:
        return
    if int(sequence_length) != sequence_length or sequence_length < 1:
        raise ValueError(
            "`sequence_length` must be a positive integer or None. "
            f"Received: sequence_length={sequence_length}"
        )
    if add_start_end and sequence_length < 2:
        raise ValueError(
            "`sequence_length` must be at least 2 with "
            "`add_start_end=True` (room for [START] and [END]). "
            f"Received: sequence_length={sequence_length}"
        )


def _finish_ids(ids, sequence_length, add_start_end, scalar):
    """Adds [START]/[END], truncates (keeping [END]) and pads ragged ids;
    shared by the tokenizers so that they agree on the layout."""
    _check_sequence_length(sequence_length, add_start_end)
    if sequence_length is not None:
        sequence_length = int(sequence_length)
    if add_start_end:
        if sequence_length is not None:
            ids = ids[:, : sequence_length - 2]
        batch = ids.nrows()
        ids = tf.concat(
            [
                tf.fill([batch, 1], tf.constant(START_ID, tf.int32)),
                ids,
                tf.fill([batch, 1], tf.constant(END_ID, tf.int32)),
            ],
            axis=1,
        )
    if sequence_length is not None:
        ids = ids.to_tensor(default_value=PAD_ID, shape=[None, sequence_length])
    if scalar:
        ids = ids[0]
    return ids


def _keep_before_end(ids, vocabulary_size):
    """`(kept, scalar)`: a ragged `(batch, None)` of the ids before the
    first [END], without [PAD] and [START]; out-of-range ids read as [UNK]."""
    if isinstance(ids, tf.RaggedTensor):
        if ids.shape.rank != 2:
            raise ValueError(
                f"Ragged `ids` must have rank 2. Received shape: {ids.shape}"
            )
        ids = ids.to_tensor(default_value=PAD_ID)
    else:
        ids = tf.convert_to_tensor(ids)
    if not ids.dtype.is_integer:
        raise TypeError(f"`ids` must be integers. Received dtype: {ids.dtype}")
    ids = tf.cast(ids, tf.int32)
    rank = ids.shape.rank
    if rank not in (1, 2):
        raise ValueError(
            "`ids` must have rank 1 or 2 (batch, length). "
            f"Received shape: {ids.shape}"
        )
    scalar = rank == 1
    if scalar:
        ids = ids[tf.newaxis]

    size = tf.constant(vocabulary_size, tf.int32)
    ids = tf.where(tf.logical_and(ids >= 0, ids < size), ids, UNK_ID)
    before_end = tf.equal(
        tf.cumsum(tf.cast(tf.equal(ids, END_ID), tf.int32), axis=1), 0
    )
    keep = tf.logical_and(
        before_end,
        tf.logical_and(tf.not_equal(ids, PAD_ID), tf.not_equal(ids, START_ID)),
    )
    kept = tf.ragged.boolean_mask(ids, keep)
    return kept, scalar


# ----------------------------------------------------------------------
# Vocabulary files and training.


def _read_vocabulary(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Vocabulary file not found: {path!r}")
    with open(path, encoding="utf-8") as f:
        tokens = [line.rstrip("\r\n") for line in f]
    while tokens and tokens[-1] == "":
        tokens.pop()
    return tokens


def _check_vocabulary(vocabulary):
    vocabulary = list(vocabulary)
    for i, token in enumerate(vocabulary):
        if not isinstance(token, str):
            raise TypeError(
                f"Vocabulary tokens must be `str`. Token {i} is {token!r}."
            )
        if not token or "\n" in token or "\r" in token:
            raise ValueError(
                f"Vocabulary token {i} ({token!r}) is empty or holds a line break."
            )
    if tuple(vocabulary[: len(RESERVED_TOKENS)]) != RESERVED_TOKENS:
        raise ValueError(
            f"The vocabulary must start with the reserved tokens "
            f"{list(RESERVED_TOKENS)} (ids 0-3). Received: "
            f"{vocabulary[: len(RESERVED_TOKENS)]}"
        )
    seen = set()
    for token in vocabulary:
        if token in seen:
            raise ValueError(f"Vocabulary token {token!r} appears twice.")
        seen.add(token)
    return vocabulary


def _string_batches(texts, batch_size=4096):
    """Yields `(batch,)` string tensors from a list or a `tf.data.Dataset`."""
    if isinstance(texts, tf.data.Dataset):
        spec = texts.element_spec
        if not isinstance(spec, tf.TensorSpec) or spec.dtype != tf.string:
            raise TypeError(
                "`texts` must be a dataset of strings (scalars or batches). "
                f"Received element_spec: {spec}"
            )
        dataset = texts.map(lambda x: tf.reshape(x, [-1])).rebatch(batch_size)
        for batch in dataset:
            yield batch
        return
    if isinstance(texts, str):
        raise TypeError("`texts` must be a list of strings, not one string.")
    texts = list(texts)
    for start in range(0, len(texts), batch_size):
        yield tf.constant(texts[start : start + batch_size], tf.string)


def _learn_vocabulary(word_counts, vocabulary_size, min_frequency):
    """Learns WordPiece tokens by frequency-ordered merges.

    Args:
        word_counts: `{(piece, attached): count}`; an attached piece is
            spelled with continuation tokens from its first character.
        vocabulary_size: the target size, reserved tokens included.
        min_frequency: pairs seen fewer times are not merged.

    Returns:
        A list of tokens: reserved, every character in both forms, merges.
    """
    characters = sorted({ch for piece, _ in word_counts for ch in piece})
    vocabulary = list(RESERVED_TOKENS)
    vocabulary += characters
    vocabulary += [SUFFIX_INDICATOR + ch for ch in characters]
    known = set(vocabulary)

    words, counts = [], []
    for (piece, attached), count in sorted(word_counts.items()):
        if len(piece) < 2 or len(piece.encode("utf-8")) > MAX_BYTES_PER_WORD:
            continue  # nothing to merge, or an [UNK] anyway
        first = SUFFIX_INDICATOR + piece[0] if attached else piece[0]
        words.append([first] + [SUFFIX_INDICATOR + ch for ch in piece[1:]])
        counts.append(count)

    pair_counts = collections.defaultdict(int)
    pair_words = collections.defaultdict(set)
    for index, (symbols, count) in enumerate(zip(words, counts)):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += count
            pair_words[pair].add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    while len(vocabulary) < vocabulary_size and heap:
        negative_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative_count:
            continue  # stale entry
        if -negative_count < min_frequency:
            break
        left, right = pair
        merged = left + right[len(SUFFIX_INDICATOR):]
        if merged not in known:
            known.add(merged)
            vocabulary.append(merged)
        touched = set()
        for index in pair_words.pop(pair, ()):
            symbols, count = words[index], counts[index]
            # Merge left to right; remember which pair positions changed.
            new_symbols, old_positions, new_positions = [], set(), set()
            size, start = len(symbols), 0
            while True:
                try:
                    k = symbols.index(left, start)
                except ValueError:
                    break
                if k + 1 < size and symbols[k + 1] == right:
                    new_symbols.extend(symbols[start:k])
                    old_positions.update((k - 1, k, k + 1))
                    new_positions.update((len(new_symbols) - 1, len(new_symbols)))
                    new_symbols.append(merged)
                    start = k + 2
                else:
                    new_symbols.extend(symbols[start : k + 1])
                    start = k + 1
            if not old_positions:
                continue  # a stale index: the pair is no longer there
            new_symbols.extend(symbols[start:])
            for x in old_positions:
                if 0 <= x < size - 1:
                    changed = (symbols[x], symbols[x + 1])
                    pair_counts[changed] -= count
                    touched.add(changed)
            for x in new_positions:
                if 0 <= x < len(new_symbols) - 1:
                    changed = (new_symbols[x], new_symbols[x + 1])
                    pair_counts[changed] += count
                    pair_words[changed].add(index)
                    touched.add(changed)
            words[index] = new_symbols
        for changed in touched:
            count = pair_counts.get(changed, 0)
            if count > 0:
                heapq.heappush(heap, (-count, changed))
            else:
                pair_counts.pop(changed, None)
                pair_words.pop(changed, None)
    return vocabulary
