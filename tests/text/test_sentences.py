"""Sentence splitting for translation (`keras_xformer.text.sentences`):
the TensorFlow string ops against a plain-Python statement of the rule,
exact round trips, and the same split inside a graph."""

import re

import numpy as np
import pytest
import tensorflow as tf

from keras_xformer.text.sentences import ABBREVIATIONS
from keras_xformer.text.sentences import join_sentences
from keras_xformer.text.sentences import split_sentences
from keras_xformer.text.sentences import translate_by_sentence

pytestmark = pytest.mark.tensorflow_only

SPACE = "\\s\u00a0\u2000-\u200a\u202f\u205f\u3000"
CLOSE = "\"'\u00bb\u201d\u2019)\\]"
OPEN = "\"'\u00ab\u201c\u2018(\\["


def reference_split(text):
    """The rule in plain Python: cut at terminal punctuation (+ closing
    marks) + white space before an upper-case letter, digit or opening
    mark, unless the word before the stop is an abbreviation or a letter."""
    if "\x1f" in text:
        return [text], []
    boundary = re.compile(
        rf"(?<=[.!?\u2026])([{CLOSE}]*)([{SPACE}]+)(?=[A-Z\u00c0-\u00de0-9{OPEN}])", re.ASCII)
    sentences, separators, start = [], [], 0
    for match in boundary.finditer(text):
        head = text[start : match.start(1)]
        words = re.split(f"[{SPACE}]", head)
        word = words[-1].lstrip(OPEN.replace("\\", "")).lower()
        if head.endswith(".") and (word[:-1] in ABBREVIATIONS
                                   or (len(word) == 2 and word[0].isalpha())):
            continue
        sentences.append(text[start : match.start(2)])
        separators.append(match.group(2))
        start = match.end()
    sentences.append(text[start:])
    return sentences, separators


CASES = {
    "Models are here. Each model has fields": ["Models are here.", "Each model has fields"],
    "See e.g. Foo bar. Next one!": ["See e.g. Foo bar.", "Next one!"],
    "J. Smith wrote it. Then": ["J. Smith wrote it.", "Then"],
    'He said "Stop." Then left': ['He said "Stop."', "Then left"],
    "Really?! Yes.  Two\u00a0spaces. \u00c9t\u00e9": ["Really?!", "Yes.", "Two\u00a0spaces.",
                                                       "\u00c9t\u00e9"],
    "Dr. Who. Mr. X said (hi). [Next] one": ["Dr. Who.", "Mr. X said (hi).", "[Next] one"],
    "Version 5.0.0. Removed in 6.0.": ["Version 5.0.0.", "Removed in 6.0."],
    "Open www.example.com. it is lower case": ["Open www.example.com. it is lower case"],
    "Removed ... Name: ${f}": ["Removed ...", "Name: ${f}"],
    "Fig. 3 shows it. 4 items": ["Fig. 3 shows it.", "4 items"],
    "Trailing space. ": ["Trailing space. "],
    "": [""],
    "A.\x1f B. C": ["A.\x1f B. C"],  # holds the internal mark: left whole
    "no boundary at all": ["no boundary at all"],
}


def test_known_cases_and_round_trip():
    texts = list(CASES)
    sentences, separators = split_sentences(texts)
    got = [[s.decode() for s in row] for row in sentences.to_list()]
    assert got == list(CASES.values())
    assert [t.decode() for t in join_sentences(sentences, separators).numpy()] == texts


def test_equals_the_plain_python_rule_on_random_texts():
    rng = np.random.default_rng(0)
    alphabet = list("abcXYZ\u00e9\u00c9 .!?\"'()[]\u00ab\u00bb\u2026\u00a0\u202f\t\n1-") + [
        "e.g.", "Dr.", "etc.", " J. ", "Mr", "%(name)s", "\u65e5\u672c", "\U0001f600"]
    texts = ["".join(rng.choice(alphabet, size=rng.integers(0, 40))) for _ in range(2000)]
    sentences, separators = split_sentences(texts)
    for text, row, gaps in zip(texts, sentences.to_list(), separators.to_list()):
        assert ([s.decode() for s in row], [g.decode() for g in gaps]) == reference_split(text)
    assert [t.decode() for t in join_sentences(sentences, separators).numpy()] == texts
    assert sentences.row_lengths().numpy().max() > 3  # the texts did have boundaries


def test_in_a_graph_and_sentence_by_sentence():
    texts = tf.constant(["One. Two!", "Three", ""])
    calls = []

    def translate(flat):
        calls.append(flat.shape)
        return tf.strings.upper(flat)

    traced = tf.function(lambda t: translate_by_sentence(translate, t),
                         input_signature=[tf.TensorSpec([None], tf.string)])
    out = traced(texts).numpy().tolist()
    assert out == [b"ONE. TWO!", b"THREE", b""]
    assert calls[0].rank == 1
    sentences, _ = split_sentences(texts)
    assert sentences.flat_values.shape[0] == 4


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="1-D batch of strings"):
        split_sentences("one text, not a batch")
    with pytest.raises(ValueError, match="1-D batch of strings"):
        split_sentences([[b"a"]])
    with pytest.raises(ValueError, match="1-D batch of strings"):
        split_sentences([1, 2])
    sentences, separators = split_sentences(["One. Two", "Three"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="one separator between"):
        join_sentences(sentences, separators[:, :0])
