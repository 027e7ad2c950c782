"""`tf.data` input pipelines for teacher-forced translation training.

Tokenization runs inside `Dataset.map` on whole batches (one vectorized
TensorFlow Text call per batch, no Python per example), then `prefetch`
overlaps it with the training step.
"""

import numpy as np
import tensorflow as tf

from keras_xformer.text.wordpiece import END_ID
from keras_xformer.text.wordpiece import START_ID


def encode_source(tokenizer, texts, source_length):
    """Source ids `(batch, source_length)`, 0-padded, ending with [END] (kept
    on truncation). The one place that defines what the encoder sees:
    training, evaluation and the exported models all call it."""
    # Tokenized one longer with [START], which is then dropped: truncation
    # keeps [END] and the result is exactly `source_length` wide.
    ids = tokenizer.tokenize(texts, sequence_length=source_length + 1, add_start_end=True)
    return ids[:, 1:]


def encode_target(tokenizer, texts, target_length):
    """`[START] ids [END]` padded to `target_length + 1`, so that inputs
    `[:, :-1]` and labels `[:, 1:]` are both `target_length` long."""
    return tokenizer.tokenize(texts, sequence_length=target_length + 1, add_start_end=True)


def token_lengths(tokenizer, texts, batch_size=4096):
    """Number of word pieces of each text (without [START]/[END])."""
    lengths = []
    for i in range(0, len(texts), batch_size):
        ragged = tokenizer.tokenize(list(texts[i : i + batch_size]))
        lengths.append(ragged.row_lengths().numpy())
    return np.concatenate(lengths) if lengths else np.zeros((0,), "int64")


def choose_length(tokenizer, texts, percentile=100.0, cap=None):
    """A sequence length covering `percentile`% of `texts` (+1 for [END])."""
    lengths = token_lengths(tokenizer, texts)
    length = int(np.ceil(np.percentile(lengths, percentile))) + 1
    return min(length, cap) if cap else length


def make_dataset(
    source_texts,
    target_texts,
    source_tokenizer,
    target_tokenizer,
    source_length,
    target_length,
    batch_size=64,
    shuffle=True,
    seed=0,
    bucket_boundaries=None,
    tokens_per_batch=None,
    subword_alpha=0.0,
    subword_samples=8,
):
    """`((source_ids, target_input_ids), target_label_ids)` batches.

    Args:
        source_texts, target_texts: equally long lists of str.
        source_tokenizer, target_tokenizer: `WordPieceTokenizer`s.
        source_length, target_length: padded lengths (longer texts are
            truncated, [END] kept).
        batch_size: examples per batch.
        shuffle: reshuffle every epoch (deterministic given `seed`).
        seed: shuffle seed.
        bucket_boundaries: `None` pads every batch to the fixed lengths
            (static shapes: one compiled step). A list of target-length
            boundaries groups examples of similar length
            (`bucket_by_sequence_length`) and trims each batch to its
            longest example, so short sentences are not padded to the
            corpus' longest.
        tokens_per_batch: with `bucket_boundaries`, batches by token count
            instead of `batch_size`: each bucket's batch holds about this
            many (padded) target tokens, so short sentences come many to a
            batch and every step costs about the same (the paper batches
            by about 25000 tokens).
        subword_alpha: with `bucket_boundaries` and SentencePiece
            tokenizers, > 0 trains on sampled segmentations (subword
            regularization, Kudo 2018; `SentencePieceTokenizer.sample`):
            each side of each pair takes one of `subword_samples`
            segmentations drawn once here, a different one at random every
            pass. A sample longer than the dataset's lengths is replaced
            by the pair's usual segmentation (never truncated).
        subword_samples: segmentations drawn per text.

    Returns:
        A `tf.data.Dataset`, prefetched.
    """
    if len(source_texts) != len(target_texts):
        raise ValueError(
            f"{len(source_texts)} source texts but {len(target_texts)} target texts."
        )
    if not len(source_texts):
        raise ValueError("No examples: the text lists are empty.")
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(list(source_texts)), tf.constant(list(target_texts)))
    )
    if shuffle:
        dataset = dataset.shuffle(len(source_texts), seed=seed, reshuffle_each_iteration=True)

    def encode(source, target):
        target_ids = encode_target(target_tokenizer, target, target_length)
        return (
            (encode_source(source_tokenizer, source, source_length), target_ids[:, :-1]),
            target_ids[:, 1:],
        )

    if bucket_boundaries:
        dataset = _bucketed_ids(source_texts, target_texts, source_tokenizer,
                                target_tokenizer, source_length, target_length,
                                bucket_boundaries, batch_size, tokens_per_batch,
                                shuffle, seed, subword_alpha, subword_samples)
    elif subword_alpha:
        raise ValueError("`subword_alpha` needs `bucket_boundaries` (the pre-tokenized, "
                         "length-bucketed pipeline).")
    else:
        dataset = dataset.batch(batch_size).map(encode, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def bucket_batch_sizes(boundaries, longest, batch_size, tokens_per_batch=None):
    """Examples per batch in each length bucket (`boundaries` + 1 buckets)."""
    if not tokens_per_batch:
        return [batch_size] * (len(boundaries) + 1)
    uppers = list(boundaries) + [max(longest + 2, (boundaries or [1])[-1] + 1)]
    return [max(1, int(tokens_per_batch) // upper) for upper in uppers]


def bucketed_steps(source_lengths, target_lengths, boundaries, batch_sizes):
    """Batches in one pass of `make_dataset(..., bucket_boundaries=boundaries)`
    over pairs of these word-piece counts (as `token_lengths` gives them,
    none longer than the dataset's lengths), when its buckets hold
    `batch_sizes` examples (`bucket_batch_sizes`): each bucket ends with
    one partial batch. `fit` needs it as `steps_per_epoch` for a repeated
    dataset."""
    # The dataset's bucket key: pieces + [END] on the longer side.
    padded = np.maximum(np.asarray(source_lengths), np.asarray(target_lengths)) + 1
    bucket_of = np.searchsorted(np.asarray(boundaries), padded, side="right")
    counts = np.bincount(bucket_of, minlength=len(batch_sizes))
    return int(sum(-(-int(count) // size) for count, size in zip(counts, batch_sizes)))


def _bucketed(dataset, source_tokenizer, target_tokenizer, boundaries, batch_size,
              tokens_per_batch, longest):
    """Text pairs in length buckets (a streamed corpus: tokenized on the fly)."""
    def length(source, target):
        # The longer side sets the padded size of both.
        return tf.cast(tf.maximum(tf.size(source_tokenizer.tokenize(source)),
                                  tf.size(target_tokenizer.tokenize(target))) + 1, tf.int32)

    return dataset.bucket_by_sequence_length(
        length, bucket_boundaries=list(boundaries),
        bucket_batch_sizes=bucket_batch_sizes(boundaries, longest, batch_size,
                                              tokens_per_batch),
    )


def _trim_to_longest(inputs, labels):
    source, target_inputs = inputs

    def trim(ids):
        used = tf.reduce_max(tf.reduce_sum(tf.cast(ids != 0, tf.int32), axis=1))
        return ids[:, : tf.maximum(used, 1)]

    labels_length = tf.maximum(
        tf.reduce_max(tf.reduce_sum(tf.cast(labels != 0, tf.int32), axis=1)), 1
    )
    return (trim(source), target_inputs[:, :labels_length]), labels[:, :labels_length]


def _encode_all(encode, tokenizer, texts, length, chunk=8192):
    """Every text's ids, encoded as `encode` does (same truncation, [END]
    kept), as a ragged tensor without the padding."""
    rows = []
    for i in range(0, len(texts), chunk):
        dense = encode(tokenizer, tf.constant(list(texts[i : i + chunk])), length)
        rows.append(tf.RaggedTensor.from_tensor(dense, padding=0))
    return tf.concat(rows, axis=0)


def _sampled_ids(tokenizer, texts, usual, length, alpha, samples, seed, source):
    """`(texts, samples, None)` ragged ids laid out as `encode_source`
    (`source=True`) or `encode_target` lays them out, without padding: each
    a sampled segmentation, or `usual`'s row (the usual ids, same layout)
    where the sample would not fit `length`."""
    if not hasattr(tokenizer, "sample"):
        raise ValueError(
            "Subword sampling needs SentencePiece tokenizers; "
            f"{type(tokenizer).__name__} has no sampled segmentations. Use "
            "--tokenizer sentencepiece, or turn sampling off (--subword-alpha 0).")
    usual_rows = usual.to_list()
    fits = length - 1  # room for the pieces beside [END]
    variants = []
    for k in range(samples):
        rows = tokenizer.sample(texts, alpha, seed=seed * 1000 + 2 * k + (0 if source else 1))
        laid_out = []
        for row, kept in zip(rows, usual_rows):
            if len(row) > fits:
                laid_out.append(kept)
            elif source:
                laid_out.append(row + [END_ID])
            else:
                laid_out.append([START_ID] + row + [END_ID])
        lengths = np.fromiter((len(r) for r in laid_out), np.int64, len(laid_out))
        values = np.fromiter((i for r in laid_out for i in r), np.int32, int(lengths.sum()))
        variants.append(tf.RaggedTensor.from_row_lengths(values, lengths))
    return tf.stack(variants, axis=1)


def _bucketed_ids(source_texts, target_texts, source_tokenizer, target_tokenizer,
                  source_length, target_length, boundaries, batch_size, tokens_per_batch,
                  shuffle, seed, subword_alpha=0.0, subword_samples=8):
    # The corpus is tokenized once, here, not again every epoch: on a
    # 2-core machine the per-epoch tokenization ran on the cores the
    # training step needs. The ids are kept ragged, so memory grows with
    # the tokens, not with the padded lengths.
    source = _encode_all(encode_source, source_tokenizer, source_texts, source_length)
    target = _encode_all(encode_target, target_tokenizer, target_texts, target_length)
    if subword_alpha:
        # The same reasoning for sampled segmentations: drawn here, a few
        # per text (not one per text and epoch, which would tokenize
        # again every epoch on the training cores).
        if subword_samples < 1:
            raise ValueError(f"`subword_samples` must be >= 1. Received: {subword_samples}")
        source = _sampled_ids(source_tokenizer, list(source_texts), source, source_length,
                              subword_alpha, subword_samples, seed, source=True)
        target = _sampled_ids(target_tokenizer, list(target_texts), target, target_length,
                              subword_alpha, subword_samples, seed, source=False)
        dataset = tf.data.Dataset.from_tensor_slices((source, target))
        if shuffle:
            dataset = dataset.shuffle(len(source_texts), seed=seed,
                                      reshuffle_each_iteration=True)
        # A new draw every pass: which of the samples each side takes.
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        count = tf.constant(subword_samples, tf.int64)

        def pick(pair, draw):
            draw = tf.abs(draw)
            return pair[0][draw % count], pair[1][(draw // count) % count]

        dataset = tf.data.Dataset.zip((dataset, draws)).map(pick)
    else:
        # Slices of a ragged tensor come out as rank-1 ragged elements, which
        # `padded_batch` refuses; `identity` makes them plain tensors.
        dataset = tf.data.Dataset.from_tensor_slices((source, target)).map(
            lambda s, t: (tf.identity(s), tf.identity(t)))
        if shuffle:
            dataset = dataset.shuffle(len(source_texts), seed=seed,
                                      reshuffle_each_iteration=True)

    def length(source, target):
        # The longer side sets the padded size of both: pieces + [END].
        return tf.maximum(tf.size(source), tf.size(target) - 1)

    longest = max(source_length, target_length)
    # Each batch is padded to its own longest example, not to the corpus'.
    dataset = dataset.bucket_by_sequence_length(
        length, bucket_boundaries=list(boundaries),
        bucket_batch_sizes=bucket_batch_sizes(boundaries, longest, batch_size,
                                              tokens_per_batch),
    )

    def split(source, target):
        return (source, target[:, :-1]), target[:, 1:]

    return dataset.map(split, num_parallel_calls=tf.data.AUTOTUNE)


# ----------------------------------------------------------------------
# Corpora larger than memory.


def stream_pairs(path, split="train", validation_fraction=0.05, test_fraction=0.05):
    """A `tf.data.Dataset` of `(source, target)` strings read from a TSV
    file line by line, never held in memory as a whole.

    Each line's split is decided by a stable hash of its source text
    (`tf.strings.to_hash_bucket_fast`, a fingerprint that is the same on
    every machine and run), as `parallel_text.load_tsv(split="hash")` does
    for files that fit in memory. Blank lines are skipped; columns after
    the second are ignored. The dataset reads one file, so
    `MultiWorkerMirroredStrategy` shards it by data (each worker keeps its
    share of every batch): pass it through `make_stream_dataset`.

    Args:
        path: the TSV file (`source<TAB>target` per line, UTF-8).
        split: `"train"`, `"validation"` or `"test"`.
        validation_fraction, test_fraction: shares of the lines, by hash.

    Returns:
        A dataset of `(source, target)` scalar string pairs.
    """
    if split not in ("train", "validation", "test"):
        raise ValueError(
            f'`split` must be "train", "validation" or "test". Received: {split!r}')
    low, high = {"validation": (0.0, validation_fraction),
                 "test": (validation_fraction, validation_fraction + test_fraction),
                 "train": (validation_fraction + test_fraction, 1.0)}[split]
    low, high = int(round(low * 10000)), int(round(high * 10000))
    lines = tf.data.TextLineDataset(path)
    lines = lines.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)

    def split_line(line):
        fields = tf.strings.split(line, "\t", maxsplit=2)
        fields = tf.concat([fields, ["", ""]], 0)
        return tf.strings.strip(fields[0]), tf.strings.strip(fields[1])

    pairs = lines.map(split_line, num_parallel_calls=tf.data.AUTOTUNE)

    def in_split(source, target):
        bucket = tf.strings.to_hash_bucket_fast(source, 10000)
        return tf.logical_and(bucket >= low, bucket < high)

    return pairs.filter(in_split)


def sample_texts(path, count=100000):
    """The first `count` pairs of a TSV file as `(sources, targets)` lists:
    enough text to learn a vocabulary and choose lengths from."""
    sources, targets = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(sources) >= count:
                break
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) >= 2 and fields[0].strip() and fields[1].strip():
                sources.append(fields[0].strip())
                targets.append(fields[1].strip())
    return sources, targets


def make_stream_dataset(pairs, source_tokenizer, target_tokenizer, source_length,
                        target_length, tokens_per_batch=3000, bucket_boundaries=None,
                        shuffle_buffer=100000, seed=0):
    """Teacher-forced batches from a stream of `(source, target)` pairs
    (`stream_pairs`): shuffled within a buffer, pairs longer than the
    lengths left out, batched by token count in length buckets.

    Returns:
        A `tf.data.Dataset` of `((source_ids, target_input_ids),
        target_label_ids)`, sharded by data across workers.
    """
    boundaries = list(bucket_boundaries or
                      [b for b in (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192)
                       if b < max(source_length, target_length)])
    if shuffle_buffer:
        pairs = pairs.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def fits(source, target):
        return tf.logical_and(
            tf.size(source_tokenizer.tokenize(source)) < source_length,
            tf.size(target_tokenizer.tokenize(target)) < target_length)

    pairs = pairs.filter(fits)
    dataset = _bucketed(pairs, source_tokenizer, target_tokenizer, boundaries, None,
                        tokens_per_batch, max(source_length, target_length))

    def encode(source, target):
        target_ids = encode_target(target_tokenizer, target, target_length)
        return (
            (encode_source(source_tokenizer, source, source_length), target_ids[:, :-1]),
            target_ids[:, 1:],
        )

    dataset = dataset.map(encode, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.map(_trim_to_longest, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
