import numpy as np
import pytest
import tensorflow as tf

from keras_xformer.text import SentencePieceTokenizer
from keras_xformer.text import WordPieceTokenizer

pytestmark = pytest.mark.tensorflow_only  # TF Text tokenizers / the TensorFlow pipeline

# Software messages as real catalogs hold them: case, placeholders, markup,
# URLs, paths, identifiers, typographic punctuation.
MESSAGES = [
    "Open the file %s.",
    "Could not open %(filename)s: permission denied",
    "Delete {0} items?",
    "<b>Warning:</b> this cannot be undone.",
    "See https://example.org/docs/index.html for details",
    "Saved to /home/user/.config/app_settings.json",
    "Call pg_backup_start() before copying the data directory",
    "Show Hidden Files",
    "SCRAM authentication failed for user \u201cadmin\u201d",
    "L\u2019\u00e9l\u00e9ment \u00ab %s \u00bb est introuvable.",
    "Voulez-vous vraiment supprimer \u00ab {name} \u00bb ?",
    "Fichier enregistr\u00e9 dans C:\\Users\\Public",
]
CORPUS = MESSAGES * 20 + [f"Item number {i} of {i + 7}" for i in range(200)]


def decode(strings):
    return [s.decode("utf-8") for s in np.asarray(strings).reshape(-1)]


@pytest.fixture(scope="module")
def sp():
    return SentencePieceTokenizer.train(CORPUS, 300)


@pytest.fixture(scope="module")
def wp():
    return WordPieceTokenizer.train(CORPUS, 300, lower_case=False)


@pytest.mark.parametrize("name", ["sp", "wp"])
def test_real_messages_round_trip_exactly_without_unk(name, request):
    tokenizer = request.getfixturevalue(name)
    ids = tokenizer.tokenize(MESSAGES)
    assert not np.any(ids.flat_values.numpy() == 1)  # no [UNK]
    assert decode(tokenizer.detokenize(ids)) == MESSAGES
    dense = tokenizer.tokenize(MESSAGES, sequence_length=80, add_start_end=True)
    assert decode(tokenizer.detokenize(dense)) == MESSAGES


def test_unseen_characters_fall_back_to_bytes(sp):
    text = "Ung\u00fcltige Eingabe \u65e5\u672c\u8a9e \u2603"
    ids = sp.tokenize([text])
    assert not np.any(ids.flat_values.numpy() == 1)
    assert decode(sp.detokenize(ids)) == [text]


def test_reserved_ids_and_layout(sp):
    ids = sp.tokenize(["Open the file %s."], sequence_length=6, add_start_end=True).numpy()
    assert ids.shape == (1, 6) and ids[0, 0] == 2 and ids[0, -1] == 3
    assert sp.vocabulary[:4] == ["[PAD]", "[UNK]", "[START]", "[END]"]
    # Everything after [END] is dropped; [PAD] and [START] too.
    text = decode(sp.detokenize(np.array([[2, *ids[0, 1:-1], 3, 9, 9, 0]])))
    assert text == decode(sp.detokenize(ids))


def test_save_load_tf_data_and_saved_model(tmp_path, sp):
    path = str(tmp_path / "sp.model")
    sp.save(path)
    again = SentencePieceTokenizer.load(path)
    assert again.vocabulary == sp.vocabulary
    data = tf.data.Dataset.from_tensor_slices(MESSAGES).batch(4).map(
        lambda t: sp.tokenize(t, sequence_length=40))
    eager = sp.tokenize(MESSAGES, sequence_length=40).numpy()
    assert np.array_equal(np.concatenate([b.numpy() for b in data]), eager)

    module = tf.Module()
    module.tokenizer = sp
    module.round_trip = tf.function(
        lambda t: sp.detokenize(sp.tokenize(t, sequence_length=40)),
        input_signature=[tf.TensorSpec([None], tf.string)])
    tf.saved_model.save(module, str(tmp_path / "saved"))
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    assert decode(loaded.round_trip(tf.constant(MESSAGES))) == MESSAGES


def test_bad_arguments(sp):
    with pytest.raises(ValueError, match="vocabulary_size"):
        SentencePieceTokenizer.train(CORPUS, 3)
    with pytest.raises(TypeError, match="serialized"):
        SentencePieceTokenizer(123)
    with pytest.raises(ValueError, match="sequence_length"):
        sp.tokenize(["x"], sequence_length=1, add_start_end=True)
