"""The user's own parallel corpus: one `source<TAB>target` pair per line."""

import os
import random
import zlib


def _read_pairs(path):
    pairs = []
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}:{line_number}: the line is not valid UTF-8 "
                    f"({error.reason} at byte {error.start})."
                ) from None
            if line_number == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            if "\t" not in line:
                raise ValueError(
                    f"{path}:{line_number}: expected 'source<TAB>target', "
                    f"found no tab in {line.strip()[:80]!r}."
                )
            source, target = line.split("\t")[:2]
            source, target = source.strip(), target.strip()
            if not source or not target:
                side = "source" if not source else "target"
                raise ValueError(
                    f"{path}:{line_number}: the {side} text is empty in "
                    f"{line.strip()[:80]!r}."
                )
            pairs.append((source, target))
    return pairs


def load_tsv(
    path,
    validation_fraction=0.05,
    test_fraction=0.05,
    seed=0,
    max_pairs=None,
    split="shuffle",
    held_out_pairs=None,
):
    """Loads a parallel corpus from a tab-separated file.

    Each non-blank line is `source<TAB>target` in UTF-8; columns after the
    second are ignored, so the Anki/Tatoeba files
    (`English<TAB>French<TAB>attribution`) load as they are. Whitespace
    around each side is stripped and blank lines are skipped. The pairs are
    shuffled with `random.Random(seed)`, cut to `max_pairs`, then split:
    validation first, test next, training the rest. Each split gets at least
    one pair when its fraction is above 0.

    With `split="hash"` each pair's split is decided by a stable hash of
    its source text (crc32): the same line lands in the same split whatever
    else the file holds, so adding data never moves a test pair into
    training, and repeated source texts never straddle two splits. The
    split sizes are then close to, not exactly, the fractions; the training
    pairs keep the file's order, shuffled with `seed`.

    Args:
        path: the file.
        validation_fraction: share of pairs for validation, in [0, 1).
        test_fraction: share of pairs for testing, in [0, 1).
        seed: seed of the shuffle.
        max_pairs: keep at most this many pairs (a random sample of the
            file), or None for all.
        split: `"shuffle"` (shuffle, then cut) or `"hash"` (by a stable
            hash of the source text).
        held_out_pairs: at most about this many pairs each for validation
            and test: a fraction that would give more is lowered to
            `held_out_pairs / pairs` (a large corpus trains on the rest).

    Returns:
        `(train, validation, test)`, each a tuple
        `(source_texts, target_texts)` of two equally long lists of `str`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a line has no tab, an empty side or bytes that are not
            UTF-8 (the message names the file and the line number); the
            fractions are out of range; too few pairs for the splits.

    Example:

    >>> train, validation, test = load_tsv("fra.txt")  # doctest: +SKIP
    >>> english, french = train  # doctest: +SKIP
    """
    path = os.fspath(path)
    for name, value in (
        ("validation_fraction", validation_fraction),
        ("test_fraction", test_fraction),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 <= value < 1
        ):
            raise ValueError(
                f"`{name}` must be a number in [0, 1). Received: {name}={value!r}"
            )
    if validation_fraction + test_fraction >= 1:
        raise ValueError(
            "`validation_fraction + test_fraction` must be below 1 (some pairs "
            f"must be left for training). Received: {validation_fraction} + "
            f"{test_fraction}"
        )
    if max_pairs is not None and (
        isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1
    ):
        raise ValueError(
            "`max_pairs` must be a positive integer or None. "
            f"Received: max_pairs={max_pairs!r}"
        )
    if not os.path.exists(path):
        raise FileNotFoundError(f"Parallel corpus not found: {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not a TSV file.")

    if split not in ("shuffle", "hash"):
        raise ValueError(f'`split` must be "shuffle" or "hash". Received: split={split!r}')
    if held_out_pairs is not None and (
        isinstance(held_out_pairs, bool) or not isinstance(held_out_pairs, int)
        or held_out_pairs < 1
    ):
        raise ValueError("`held_out_pairs` must be a positive integer or None. "
                         f"Received: held_out_pairs={held_out_pairs!r}")
    pairs = _read_pairs(path)
    if held_out_pairs is not None:
        share = held_out_pairs / max(1, min(len(pairs), max_pairs or len(pairs)))
        validation_fraction = min(validation_fraction, share)
        test_fraction = min(test_fraction, share)
    if split == "hash":
        return _hash_split(path, pairs, validation_fraction, test_fraction, seed, max_pairs)
    random.Random(seed).shuffle(pairs)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]

    total = len(pairs)
    validation_size = round(total * validation_fraction)
    test_size = round(total * test_fraction)
    if validation_fraction > 0:
        validation_size = max(validation_size, 1)
    if test_fraction > 0:
        test_size = max(test_size, 1)
    train_size = total - validation_size - test_size
    if train_size < 1:
        raise ValueError(
            f"{path}: {total} pair(s) are too few for a training split with "
            f"validation_fraction={validation_fraction} and "
            f"test_fraction={test_fraction}."
        )

    def unzip(chunk):
        return [s for s, _ in chunk], [t for _, t in chunk]

    validation = unzip(pairs[:validation_size])
    test = unzip(pairs[validation_size : validation_size + test_size])
    train = unzip(pairs[validation_size + test_size :])
    return train, validation, test


def _hash_split(path, pairs, validation_fraction, test_fraction, seed, max_pairs):
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    splits = ([], [], [])
    for source, target in pairs:
        bucket = (zlib.crc32(source.encode("utf-8")) % 10000) / 10000
        index = 1 if bucket < validation_fraction else (
            2 if bucket < validation_fraction + test_fraction else 0)
        splits[index].append((source, target))
    if not splits[0]:
        raise ValueError(f"{path}: {len(pairs)} pair(s) leave no training split.")
    random.Random(seed).shuffle(splits[0])
    return tuple(([s for s, _ in chunk], [t for _, t in chunk]) for chunk in splits)
