"""The user's own parallel corpus: one `source<TAB>target` pair per line."""

import os
import random


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
):
    """Loads a parallel corpus from a tab-separated file.

    Each non-blank line is `source<TAB>target` in UTF-8; columns after the
    second are ignored, so the Anki/Tatoeba files
    (`English<TAB>French<TAB>attribution`) load as they are. Whitespace
    around each side is stripped and blank lines are skipped. The pairs are
    shuffled with `random.Random(seed)`, cut to `max_pairs`, then split:
    validation first, test next, training the rest. Each split gets at least
    one pair when its fraction is above 0.

    Args:
        path: the file.
        validation_fraction: share of pairs for validation, in [0, 1).
        test_fraction: share of pairs for testing, in [0, 1).
        seed: seed of the shuffle.
        max_pairs: keep at most this many pairs (a random sample of the
            file), or None for all.

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

    pairs = _read_pairs(path)
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
