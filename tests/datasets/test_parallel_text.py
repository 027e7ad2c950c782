import pytest

from keras_xformer.datasets import parallel_text

CC = "CC-BY 2.0 (France) Attribution: tatoeba.org"


def write_corpus(path, count=100):
    lines = [f"  sentence {i}.\tphrase {i} !\t{CC} #{i}" for i in range(count)]
    lines.insert(10, "")
    lines.insert(20, "   ")
    path.write_text("\ufeff" + "\r\n".join(lines) + "\r\n", encoding="utf-8")
    return [(f"sentence {i}.", f"phrase {i} !") for i in range(count)]


def pairs_of(split):
    source, target = split
    assert len(source) == len(target)
    return list(zip(source, target))


def test_load_anki_style_file(tmp_path):
    path = tmp_path / "fra.txt"
    expected = write_corpus(path)
    train, validation, test = parallel_text.load_tsv(path)
    assert [len(s[0]) for s in (train, validation, test)] == [90, 5, 5]
    everything = pairs_of(train) + pairs_of(validation) + pairs_of(test)
    # Stripped, third column dropped, BOM, CRLF and blank lines handled.
    assert sorted(everything) == sorted(expected)
    assert all(isinstance(s, str) for pair in everything for s in pair)


def test_deterministic_and_disjoint(tmp_path):
    path = tmp_path / "pairs.tsv"
    write_corpus(path)
    first = parallel_text.load_tsv(path, validation_fraction=0.1, test_fraction=0.2)
    again = parallel_text.load_tsv(str(path), validation_fraction=0.1, test_fraction=0.2)
    other = parallel_text.load_tsv(
        path, validation_fraction=0.1, test_fraction=0.2, seed=1
    )
    assert first == again
    assert first != other
    train, validation, test = (set(pairs_of(s)) for s in first)
    assert (len(train), len(validation), len(test)) == (70, 10, 20)
    assert not train & validation and not train & test and not validation & test


def test_max_pairs_and_zero_fractions(tmp_path):
    path = tmp_path / "pairs.tsv"
    expected = write_corpus(path)
    train, validation, test = parallel_text.load_tsv(
        path, validation_fraction=0, test_fraction=0, max_pairs=30
    )
    assert len(train[0]) == 30 and validation == ([], []) and test == ([], [])
    assert set(pairs_of(train)) <= set(expected)
    # Tiny corpora still get one pair per requested split.
    small = tmp_path / "small.tsv"
    small.write_text("a\tb\nc\td\ne\tf\n", encoding="utf-8")
    train, validation, test = parallel_text.load_tsv(small)
    assert (len(train[0]), len(validation[0]), len(test[0])) == (1, 1, 1)


@pytest.mark.parametrize(
    "content, line, message",
    [
        ("a\tb\nno tab here\nc\td\n", 2, "no tab"),
        ("a\tb\n\nc\td\n\t target only\n", 4, "source text is empty"),
        ("a\tb\nsource\t   \n", 2, "target text is empty"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, content, line, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        parallel_text.load_tsv(path)
    assert f"{path}:{line}:" in str(info.value)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes("un\tone\ndeux\ttwo\ncaf\u00e9\tcoffee\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8") as info:
        parallel_text.load_tsv(path)
    assert f"{path}:3:" in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.tsv"
    with pytest.raises(FileNotFoundError, match="nowhere.tsv"):
        parallel_text.load_tsv(path)


def test_bad_fractions_and_too_few_pairs(tmp_path):
    path = tmp_path / "pairs.tsv"
    write_corpus(path, count=10)
    for kwargs in (
        {"validation_fraction": -0.1},
        {"test_fraction": 1.0},
        {"validation_fraction": 0.5, "test_fraction": 0.5},
        {"max_pairs": 0},
    ):
        with pytest.raises(ValueError):
            parallel_text.load_tsv(path, **kwargs)
    two = tmp_path / "two.tsv"
    two.write_text("a\tb\nc\td\n", encoding="utf-8")
    with pytest.raises(ValueError, match="too few"):
        parallel_text.load_tsv(two)
    empty = tmp_path / "empty.tsv"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="too few"):
        parallel_text.load_tsv(empty)


def test_hash_split_is_stable_and_follows_the_source_text(tmp_path):
    path = tmp_path / "pairs.tsv"
    expected = write_corpus(path, count=400)
    train, validation, test = parallel_text.load_tsv(path, split="hash")
    everything = pairs_of(train) + pairs_of(validation) + pairs_of(test)
    assert sorted(everything) == sorted(expected)
    assert 5 <= len(pairs_of(validation)) <= 40 and 5 <= len(pairs_of(test)) <= 40
    # Adding lines never moves a pair from one split to another.
    bigger = tmp_path / "bigger.tsv"
    write_corpus(bigger, count=800)
    _, validation2, test2 = parallel_text.load_tsv(bigger, split="hash")
    assert set(pairs_of(test)) <= set(pairs_of(test2))
    assert set(pairs_of(validation)) <= set(pairs_of(validation2))
    with pytest.raises(ValueError, match="split"):
        parallel_text.load_tsv(path, split="random")


@pytest.mark.parametrize("split", ["shuffle", "hash"])
def test_held_out_pairs_caps_validation_and_test(tmp_path, split):
    path = tmp_path / "pairs.tsv"
    expected = write_corpus(path, count=800)
    train, validation, test = parallel_text.load_tsv(path, split=split, held_out_pairs=10)
    assert sorted(pairs_of(train) + pairs_of(validation) + pairs_of(test)) == sorted(expected)
    if split == "shuffle":
        assert len(pairs_of(validation)) == len(pairs_of(test)) == 10
    else:  # about 10: the hash decides
        assert 2 <= len(pairs_of(validation)) <= 25 and 2 <= len(pairs_of(test)) <= 25
    # A cap above 5% leaves the fractions as they are.
    assert parallel_text.load_tsv(path, split=split, held_out_pairs=1000) == \
        parallel_text.load_tsv(path, split=split)
    with pytest.raises(ValueError, match="held_out_pairs"):
        parallel_text.load_tsv(path, held_out_pairs=0)
