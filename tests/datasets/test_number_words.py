import random

import pytest
from num2words import num2words

from keras_xformer.datasets import number_words


def all_texts(split):
    source, target = split
    return source + target


def test_shapes_and_types():
    train, validation, test = number_words.load_data(
        train_size=300, validation_size=40, test_size=30
    )
    for split, size in ((train, 300), (validation, 40), (test, 30)):
        assert isinstance(split, tuple) and len(split) == 2
        source, target = split
        assert isinstance(source, list) and isinstance(target, list)
        assert len(source) == len(target) == size
        assert all(isinstance(s, str) and s for s in source + target)


def test_pairs_are_the_same_number_in_both_languages():
    # All 1000 numbers of [0, 999]: every pair can be checked against num2words.
    splits = number_words.load_data(
        "en-fr", train_size=900, validation_size=50, test_size=50, max_number=999
    )
    english_to_french = {
        num2words(n, lang="en"): num2words(n, lang="fr") for n in range(1000)
    }
    seen = []
    for source, target in splits:
        for s, t in zip(source, target):
            assert english_to_french[s] == t
        seen += source
    assert sorted(seen) == sorted(english_to_french)  # each number exactly once


def test_en_de_and_reverse_pairs():
    (source, target), _, _ = number_words.load_data(
        "en-de", train_size=50, validation_size=0, test_size=0, max_number=99
    )
    german = {num2words(n, lang="en"): num2words(n, lang="de") for n in range(100)}
    assert [german[s] for s in source] == target
    (source, target), _, _ = number_words.load_data(
        "fr-en", train_size=50, validation_size=0, test_size=0, max_number=99
    )
    french = {num2words(n, lang="fr"): num2words(n, lang="en") for n in range(100)}
    assert [french[s] for s in source] == target


def test_splits_are_disjoint():
    train, validation, test = number_words.load_data(
        train_size=2000, validation_size=200, test_size=200
    )
    sets = [set(split[0]) for split in (train, validation, test)]
    assert [len(s) for s in sets] == [2000, 200, 200]  # no duplicates inside
    assert not sets[0] & sets[1]
    assert not sets[0] & sets[2]
    assert not sets[1] & sets[2]


def test_same_seed_same_data_other_seed_other_data():
    first = number_words.load_data(train_size=200, validation_size=20, test_size=20)
    again = number_words.load_data(train_size=200, validation_size=20, test_size=20)
    other = number_words.load_data(
        train_size=200, validation_size=20, test_size=20, seed=1
    )
    assert first == again
    assert first != other


def test_numbers_mix_magnitudes():
    (source, _), _, _ = number_words.load_data(
        train_size=2000, validation_size=0, test_size=0
    )
    below_thousand = [s for s in source if "thousand" not in s]
    assert len(below_thousand) > 100  # small numbers are there
    assert any(s.startswith(("nine hundred", "eight hundred")) and "thousand" in s
               for s in source)  # and six-digit ones
    assert len(source) - len(below_thousand) > 1000


def test_default_sizes():
    train, validation, test = number_words.load_data()
    assert len(train[0]) == 20000
    assert len(validation[0]) == len(test[0]) == 1000
    assert not set(train[0]) & set(test[0])


@pytest.mark.parametrize("lang", ["en", "fr", "de"])
def test_fast_conversion_equals_num2words(lang):
    rng = random.Random(lang)
    numbers = list(range(120)) + rng.sample(range(10**8), 300)
    for n in numbers:
        assert number_words.to_words(n, lang) == num2words(n, lang=lang)


def test_errors():
    with pytest.raises(ValueError, match="en-fr.*en-de"):
        number_words.load_data("en-es")
    with pytest.raises(ValueError, match="only 100 numbers"):
        number_words.load_data(
            train_size=90, validation_size=10, test_size=1, max_number=99
        )
    with pytest.raises(ValueError, match="train_size"):
        number_words.load_data(train_size=-1)
    with pytest.raises(ValueError, match="test_size"):
        number_words.load_data(test_size=2.5)
