import random

import numpy as np
import pytest
import tensorflow as tf
from num2words import num2words

from keras_xformer.text import WordPieceTokenizer

# TensorFlow-only feature (tests/conftest.py): skipped on JAX and PyTorch.
pytestmark = pytest.mark.tensorflow_only

RESERVED = ["[PAD]", "[UNK]", "[START]", "[END]"]


def number_sentences(lang, count, seed):
    rng = random.Random(seed)
    numbers = rng.sample(range(1000), count // 3) + rng.sample(
        range(1000, 1_000_000), count - count // 3
    )
    return [num2words(n, lang=lang) for n in numbers]


def decode(strings):
    return [s.decode("utf-8") for s in np.asarray(strings).reshape(-1)]


@pytest.fixture(scope="module")
def tokenizers():
    """One tokenizer per language, trained on 300 number sentences."""
    return {
        lang: WordPieceTokenizer.train(number_sentences(lang, 300, seed=1), 400)
        for lang in ("en", "fr", "de")
    }


@pytest.fixture(scope="module")
def fr(tokenizers):
    return tokenizers["fr"]


FR_SENTENCES = [
    "vingt-et-un",
    "dix-sept mille",
    "quatre-vingt-dix-neuf mille neuf cent quatre-vingt-dix-neuf",
    "cent vingt et un",
    "",
]


# ----------------------------------------------------------------------
# Vocabulary.


def test_reserved_ids(fr):
    assert fr.vocabulary[:4] == RESERVED
    for i, token in enumerate(RESERVED):
        assert fr.token_to_id(token) == i
        assert fr.id_to_token(i) == token
    assert (fr.pad_id, fr.unk_id, fr.start_id, fr.end_id) == (0, 1, 2, 3)
    assert fr.vocabulary_size == len(fr.vocabulary)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        fr.token_to_id("no-such-token")
    with pytest.raises(ValueError, match="out of range"):
        fr.id_to_token(fr.vocabulary_size)


def test_vocabulary_must_start_with_reserved_tokens():
    with pytest.raises(ValueError, match="reserved tokens"):
        WordPieceTokenizer(["[UNK]", "[PAD]", "[START]", "[END]", "a"])
    with pytest.raises(ValueError, match="twice"):
        WordPieceTokenizer(RESERVED + ["a", "b", "a"])
    with pytest.raises(ValueError, match="empty"):
        WordPieceTokenizer(RESERVED + [""])


def test_vocabulary_size_is_respected():
    texts = number_sentences("en", 300, seed=2)
    small = WordPieceTokenizer.train(texts, 60, min_frequency=2)
    assert small.vocabulary_size == 60
    large = WordPieceTokenizer.train(texts, 300, min_frequency=2)
    assert 60 < large.vocabulary_size <= 300
    assert large.vocabulary[:60] == small.vocabulary  # merges in order
    assert "hundred" in large.vocabulary


def test_every_training_character_is_in_the_vocabulary():
    texts = ["Ça coûte 5 €, ß-straße!", "naïve Œuvre 日本語", "x"]
    tokenizer = WordPieceTokenizer.train(texts, 10)  # alphabet wins
    characters = {c for t in texts for c in t.lower() if not c.isspace()}
    for c in characters:
        assert c in tokenizer.vocabulary
        assert "##" + c in tokenizer.vocabulary
    ids = tokenizer.tokenize(texts)
    assert not np.any(ids.flat_values.numpy() == 1)
    assert decode(tokenizer.detokenize(ids)) == [t.lower() for t in texts]


def test_train_from_dataset_equals_train_from_list():
    texts = number_sentences("fr", 120, seed=3)
    from_list = WordPieceTokenizer.train(texts, 200)
    scalars = tf.data.Dataset.from_tensor_slices(texts)
    assert WordPieceTokenizer.train(scalars, 200).vocabulary == from_list.vocabulary
    batches = scalars.batch(7)
    assert WordPieceTokenizer.train(batches, 200).vocabulary == from_list.vocabulary
    with pytest.raises(TypeError, match="dataset of strings"):
        WordPieceTokenizer.train(tf.data.Dataset.from_tensor_slices([1, 2]), 20)


def test_save_and_load(tmp_path, fr):
    path = tmp_path / "vocab.txt"
    fr.save(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines == fr.vocabulary
    loaded = WordPieceTokenizer.load(path)
    assert loaded.vocabulary == fr.vocabulary
    ids = fr.tokenize(FR_SENTENCES, sequence_length=16, add_start_end=True)
    np.testing.assert_array_equal(
        loaded.tokenize(FR_SENTENCES, sequence_length=16, add_start_end=True),
        ids,
    )
    from_path = WordPieceTokenizer(str(path))
    assert from_path.vocabulary == fr.vocabulary
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        WordPieceTokenizer.load(tmp_path / "missing.txt")


# ----------------------------------------------------------------------
# Round trips.


@pytest.mark.parametrize("lang", ["en", "fr", "de"])
def test_number_words_round_trip_exactly(tokenizers, lang):
    tokenizer = tokenizers[lang]
    sentences = number_sentences(lang, 300, seed=99)  # not the training set
    ids = tokenizer.tokenize(sentences)
    assert not np.any(ids.flat_values.numpy() == 1)  # no [UNK]
    assert decode(tokenizer.detokenize(ids)) == sentences
    dense = tokenizer.tokenize(sentences, sequence_length=64, add_start_end=True)
    assert decode(tokenizer.detokenize(dense)) == sentences


def test_hyphens_and_commas_are_pieces_glued_back(tokenizers, fr):
    ids = fr.tokenize("dix-sept")
    tokens = [fr.id_to_token(i) for i in ids.numpy()]
    assert tokens[0] == "dix"
    assert "##-" in tokens  # the hyphen is a piece of its own
    assert "".join(t.removeprefix("##") for t in tokens) == "dix-sept"
    assert decode(fr.detokenize(fr.tokenize(FR_SENTENCES))) == FR_SENTENCES
    en = tokenizers["en"]
    sentence = "twenty-one thousand, three hundred and forty-five"
    tokens = [en.id_to_token(i) for i in en.tokenize(sentence).numpy()]
    assert "##," in tokens and "##-" in tokens
    assert decode(en.detokenize(en.tokenize([sentence]))) == [sentence]


def test_accents_and_apostrophes_round_trip():
    texts = ["l'élève à l'école", "größer als dreißig", "où ça ? ici !"]
    tokenizer = WordPieceTokenizer.train(texts, 100)
    assert decode(tokenizer.detokenize(tokenizer.tokenize(texts))) == texts


def test_lower_case(fr):
    assert decode(fr.detokenize(fr.tokenize(["Dix-Sept  MILLE "]))) == [
        "dix-sept mille"
    ]
    texts = ["eine Million", "zwei Millionen dreihundert"]
    cased = WordPieceTokenizer.train(texts, 100, lower_case=False)
    assert not cased.lower_case
    assert decode(cased.detokenize(cased.tokenize(texts))) == texts


# ----------------------------------------------------------------------
# Shapes, padding, truncation.


def test_ragged_and_dense_outputs(fr):
    ragged = fr.tokenize(FR_SENTENCES)
    assert isinstance(ragged, tf.RaggedTensor)
    assert ragged.dtype == tf.int32
    assert ragged.shape[0] == len(FR_SENTENCES)
    dense = fr.tokenize(FR_SENTENCES, sequence_length=32)
    assert isinstance(dense, tf.Tensor) and dense.dtype == tf.int32
    assert dense.shape == (len(FR_SENTENCES), 32)
    np.testing.assert_array_equal(dense, ragged.to_tensor(shape=[None, 32]))
    lengths = ragged.row_lengths().numpy()
    for row, length in zip(dense.numpy(), lengths):
        assert np.all(row[length:] == 0)
        assert np.all(row[:length] > 3)


def test_start_end_and_truncation_keeps_end(fr):
    sentence = FR_SENTENCES[2]
    body = fr.tokenize(sentence).numpy()
    assert len(body) > 6
    full = fr.tokenize([sentence], sequence_length=len(body) + 5, add_start_end=True)
    np.testing.assert_array_equal(
        full[0], [2, *body, 3, 0, 0, 0]
    )
    cut = fr.tokenize([sentence], sequence_length=6, add_start_end=True)
    np.testing.assert_array_equal(cut[0], [2, *body[:4], 3])
    plain_cut = fr.tokenize([sentence], sequence_length=4)
    np.testing.assert_array_equal(plain_cut[0], body[:4])
    ragged = fr.tokenize([sentence], add_start_end=True)
    np.testing.assert_array_equal(ragged[0], [2, *body, 3])
    with pytest.raises(ValueError, match="at least 2"):
        fr.tokenize([sentence], sequence_length=1, add_start_end=True)
    with pytest.raises(ValueError, match="positive integer"):
        fr.tokenize([sentence], sequence_length=0)


def test_scalar_input_gives_rank_one(fr):
    ids = fr.tokenize("dix-sept")
    assert isinstance(ids, tf.Tensor) and ids.shape.rank == 1
    dense = fr.tokenize(tf.constant("dix-sept"), sequence_length=8, add_start_end=True)
    assert dense.shape == (8,)
    assert fr.detokenize(dense).numpy().decode() == "dix-sept"
    with pytest.raises(ValueError, match="scalar or a vector"):
        fr.tokenize([["a"]])


def test_empty_strings(fr):
    ragged = fr.tokenize(["", "   ", "dix"])
    assert ragged.row_lengths().numpy().tolist()[:2] == [0, 0]
    dense = fr.tokenize(["", "  \t\n"], sequence_length=4, add_start_end=True)
    np.testing.assert_array_equal(dense, [[2, 3, 0, 0], [2, 3, 0, 0]])
    assert decode(fr.detokenize(dense)) == ["", ""]
    assert fr.tokenize([]).shape[0] == 0
    assert decode(fr.detokenize(np.zeros((2, 0), "int32"))) == ["", ""]


def test_unknown_characters_become_unk(fr):
    ids = fr.tokenize(["dix € sept", "ж"])
    assert ids[0].numpy().tolist() == [
        fr.token_to_id("dix"), 1, fr.token_to_id("sept")
    ]
    assert ids[1].numpy().tolist() == [1]
    assert decode(fr.detokenize(ids)) == ["dix [UNK] sept", "[UNK]"]


def test_invalid_utf8_does_not_crash(fr):
    strings = tf.constant([b"dix\xff\xfe sept", b"\xc3", b"cent"])
    ids = fr.tokenize(strings)
    assert ids.shape[0] == 3
    rows = ids.to_list()
    assert 1 in rows[0] and fr.token_to_id("sept") in rows[0]
    assert rows[1] == [1]
    assert decode(fr.detokenize(ids)) == ["dix [UNK] [UNK] sept", "[UNK]", "cent"]


def test_ten_thousand_characters(fr):
    words = []
    while len(" ".join(words)) < 10_000:
        words += ["quatre-vingt-dix-neuf", "mille", "dix-sept", "cent"]
    text = " ".join(words)
    assert len(text) >= 10_000
    ids = fr.tokenize([text])
    assert ids.row_lengths()[0] > 2000
    assert decode(fr.detokenize(ids)) == [text]
    dense = fr.tokenize([text], sequence_length=128, add_start_end=True)
    assert dense.shape == (1, 128) and dense[0, -1] == 3
    # One word longer than 100 bytes is a single [UNK].
    assert fr.tokenize("a" * 10_000).numpy().tolist() == [1]


# ----------------------------------------------------------------------
# Detokenizing.


def test_detokenize_drops_special_tokens(fr):
    dix, sept = fr.token_to_id("dix"), fr.token_to_id("sept")
    ids = np.array(
        [
            [2, dix, sept, 3, dix, 0],
            [dix, 1, sept, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [3, dix, sept, 0, 0, 0],
        ]
    )
    expected = ["dix sept", "dix [UNK] sept", "", ""]
    assert decode(fr.detokenize(ids)) == expected
    assert decode(fr.detokenize(ids.astype("int64"))) == expected
    assert decode(fr.detokenize(tf.constant(ids))) == expected
    ragged = tf.ragged.constant([[2, dix, sept, 3, dix], [dix, 1, sept], [], [3]])
    assert decode(fr.detokenize(ragged)) == expected
    assert fr.detokenize([dix, sept, 3, dix]).numpy().decode() == "dix sept"
    # Ids outside the vocabulary read as [UNK].
    assert decode(fr.detokenize([[dix, fr.vocabulary_size, -1]])) == [
        "dix [UNK] [UNK]"
    ]


# ----------------------------------------------------------------------
# Graph modes: tf.data, tf.function, SavedModel.


def test_tf_data_map_parity(fr):
    eager = fr.tokenize(FR_SENTENCES, sequence_length=20, add_start_end=True)
    per_element = tf.data.Dataset.from_tensor_slices(FR_SENTENCES).map(
        lambda s: fr.tokenize(s, sequence_length=20, add_start_end=True)
    )
    np.testing.assert_array_equal(np.stack(list(per_element)), eager)
    batched = (
        tf.data.Dataset.from_tensor_slices(FR_SENTENCES)
        .batch(2)
        .map(lambda s: (fr.tokenize(s), fr.detokenize(fr.tokenize(s))))
    )
    ragged_rows, texts = [], []
    for ids, text in batched:
        ragged_rows += ids.to_list()
        texts += decode(text)
    assert ragged_rows == fr.tokenize(FR_SENTENCES).to_list()
    assert texts == FR_SENTENCES


def test_tf_function_parity(fr):
    @tf.function
    def round_trip(strings):
        ids = fr.tokenize(strings, sequence_length=20, add_start_end=True)
        ragged = fr.tokenize(strings)
        return ids, fr.detokenize(ids), fr.detokenize(ragged)

    ids, text, ragged_text = round_trip(tf.constant(FR_SENTENCES))
    np.testing.assert_array_equal(
        ids, fr.tokenize(FR_SENTENCES, sequence_length=20, add_start_end=True)
    )
    assert decode(text) == FR_SENTENCES
    assert decode(ragged_text) == FR_SENTENCES


class _Exported(tf.Module):
    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def tokenize(self, strings):
        return self.tokenizer.tokenize(
            strings, sequence_length=20, add_start_end=True
        )

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
    def detokenize(self, ids):
        return self.tokenizer.detokenize(ids)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def round_trip(self, strings):
        return self.tokenizer.detokenize(self.tokenizer.tokenize(strings))


def test_saved_model_parity(tmp_path, fr):
    path = str(tmp_path / "tokenizer")
    tf.saved_model.save(_Exported(fr), path)
    restored = tf.saved_model.load(path)
    strings = tf.constant(FR_SENTENCES + ["dix € sept"])
    expected = fr.tokenize(strings, sequence_length=20, add_start_end=True)
    ids = restored.tokenize(strings)
    np.testing.assert_array_equal(ids, expected)
    assert decode(restored.detokenize(ids)) == decode(fr.detokenize(expected))
    assert decode(restored.round_trip(strings)) == FR_SENTENCES + ["dix [UNK] sept"]
