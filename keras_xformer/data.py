"""`tf.data` input pipelines for teacher-forced translation training.

Tokenization runs inside `Dataset.map` on whole batches (one vectorized
TensorFlow Text call per batch, no Python per example), then `prefetch`
overlaps it with the training step.
"""

import numpy as np
import tensorflow as tf


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
        dataset = _bucketed(dataset, target_tokenizer, bucket_boundaries, batch_size)
        dataset = dataset.map(encode, num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.map(_trim_to_longest, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.batch(batch_size).map(encode, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _bucketed(dataset, target_tokenizer, boundaries, batch_size):
    def length(source, target):
        return tf.cast(tf.size(target_tokenizer.tokenize(target)), tf.int32)

    return dataset.bucket_by_sequence_length(
        length, bucket_boundaries=list(boundaries),
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
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
