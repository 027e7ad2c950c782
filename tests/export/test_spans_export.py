"""Protected spans end to end: a tiny trained model whose SavedModel
(masking and unmasking inside its graph) gives the Python path's output,
and spans that survive through a model that emits their sentinels."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_xformer import pipeline
from keras_xformer.data import encode_source
from keras_xformer.data import encode_target
from keras_xformer.export import export_saved_model
from keras_xformer.models import Transformer
from keras_xformer.text import SentencePieceTokenizer
from keras_xformer.text.spans import SpanProtector
from keras_xformer.text.spans import sentinels
from tests.export.test_export import LOADER

pytestmark = pytest.mark.tensorflow_only

# Every input below fits (the Python path would translate a longer one at
# its own length, where the SavedModel has one static length).
SOURCE_LENGTH, TARGET_LENGTH = 72, 20
WORDS = "zero one two three four five six seven eight nine".split()
MOTS = "zéro un deux trois quatre cinq six sept huit neuf".split()


def corpus(count=300):
    sources, targets = [], []
    for n in range(count):
        name = f"item_{n % 7}"
        sources.append(f"Copy {WORDS[n % 10]} of %({name})s to {{0}}")
        targets.append(f"Copier {MOTS[n % 10]} de %({name})s vers {{0}}")
    return sources, targets


@pytest.fixture(scope="module")
def trained():
    # Seeding clears TensorFlow's kernel cache, which holds the
    # SentencePiece resource: seed before the tokenizer exists.
    keras.utils.set_random_seed(3)
    protector = SpanProtector()
    sources, targets = protector.protect_pairs(*corpus())
    tokenizer = SentencePieceTokenizer.train(sources + targets, 120,
                                             user_defined_symbols=sentinels(16))
    model = Transformer(tokenizer.vocabulary_size, tokenizer.vocabulary_size,
                        num_layers=1, hidden_dim=32, num_heads=2, intermediate_dim=64,
                        share_embeddings=True, tie_output_embeddings=False, dropout=0.0)
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    source_ids = encode_source(tokenizer, sources, SOURCE_LENGTH)
    target_ids = encode_target(tokenizer, targets, TARGET_LENGTH)
    model.fit((source_ids, target_ids[:, :-1]), target_ids[:, 1:], batch_size=64, epochs=1,
              steps_per_epoch=4, verbose=0)  # a few steps
    # A few steps teach little: favour the sentinels and [END] so that the
    # generated text holds sentinels to restore and ends at varied lengths.
    bias = np.random.default_rng(0).normal(0, 1.0, tokenizer.vocabulary_size)
    for symbol in sentinels(3):
        bias[tokenizer.vocabulary.index(symbol)] += 4.0
    bias[3] += 2.0
    model.output_projection.bias.assign(bias.astype("float32"))
    return model, tokenizer, protector


INPUTS = [
    "Copy two of %(item_3)s to {0}",
    "Copy %(setting_type)s and TRAC_ENV to {name} with <b>bold</b>",
    r'Path C:\dir\1 with <a href="x\1$">',  # backslashes and regex specials
    "",
    "Plain words only",
    "日本語 %s と {name}",
    " ".join(f"%(v{i})s" for i in range(20)),  # more spans than sentinels
]


def test_saved_model_equals_the_python_path(trained, tmp_path):
    model, tokenizer, protector = trained
    path = str(tmp_path / "serving")
    export_saved_model(path, model, tokenizer, tokenizer, SOURCE_LENGTH, TARGET_LENGTH,
                       span_protector=protector)
    python = pipeline.translate_texts(model, tokenizer, tokenizer, INPUTS, SOURCE_LENGTH,
                                      TARGET_LENGTH, beam=0, spans=protector)
    # Served in a process that never imports keras_xformer: the masking
    # is plain TensorFlow (Text) ops inside the SavedModel.
    result = subprocess.run(
        [sys.executable, "-c", LOADER, path], input=json.dumps(INPUTS),
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served == python
    # The outputs hold restored spans and no sentinel is left.
    _, spans = protector.protect(INPUTS)
    restored = [any(span.decode() in text for span in row)
                for text, row in zip(served, spans.to_list())]
    assert sum(restored) >= 2, served
    assert not any(0xE000 <= ord(c) <= 0xE0FF for t in served for c in t)
    # A batch whose texts have no piece at all (a lone empty string).
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    alone = serve(text=tf.constant([""]))["translation"].numpy()
    assert alone.shape == (1,)


def test_batched_translation_equals_one_sentence_at_a_time(trained):
    """translate_texts sorts sentences by length into batches and runs a
    width's partial last batch filled with copies to the full shape: each
    sentence still gets what it gets alone."""
    _, tokenizer, protector = trained
    # Untrained weights: every input gets its own output (the trained
    # model above ends most of them at once), and few searches end early.
    model = Transformer(tokenizer.vocabulary_size, tokenizer.vocabulary_size,
                        num_layers=1, hidden_dim=32, num_heads=2, intermediate_dim=64,
                        share_embeddings=True, dropout=0.0)
    texts = INPUTS + ["Copy one of %(item_1)s to {0}", "Copy nine", "Plain", "Copy"]

    def translate(batch, batch_size):
        return pipeline.translate_texts(model, tokenizer, tokenizer, batch, SOURCE_LENGTH,
                                        TARGET_LENGTH, beam=2, batch_size=batch_size,
                                        spans=protector)

    alone = [translate([text], 1)[0] for text in texts]
    assert translate(texts, 4) == alone
    assert len(set(alone)) > len(texts) // 2, alone  # the inputs are told apart


class _SentinelModel:
    """Stands for a trained model that copies: it emits sentinels 1 and 0
    (swapped, as a translation may reorder), a word, and sentinel 9, which
    the source does not have."""

    def __init__(self, tokenizer):
        vocabulary = tokenizer.vocabulary
        s0, s1, s9 = (vocabulary.index(chr(0xE000 + i)) for i in (0, 1, 9))
        # SentencePiece spells the space before a sentinel as its own "▁".
        self.ids = [s1, vocabulary.index("▁de"), vocabulary.index("▁"), s0, s9, 3]

    def generate(self, source_ids, max_length=None, **kwargs):
        out = np.zeros((len(source_ids), max_length), "int32")
        out[:, : len(self.ids)] = self.ids
        return out


def test_spans_survive_through_a_model_that_emits_sentinels(trained, tmp_path):
    _, tokenizer, protector = trained
    model = _SentinelModel(tokenizer)
    out = pipeline.translate_texts(model, tokenizer, tokenizer,
                                   ["Copy %(setting_type)s to pg_backup_start()"],
                                   SOURCE_LENGTH, TARGET_LENGTH, beam=0, spans=protector)
    assert out == ["pg_backup_start() de %(setting_type)s"]
    # A folder's tokenizer.json carries the settings; an old folder without
    # them translates as before (no protector).
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(
        {"kind": "sentencepiece", "joint": True, "lower_case": False}))
    assert pipeline.load_span_protector(str(folder)) is None
    (folder / "tokenizer.json").write_text(json.dumps(
        {"kind": "sentencepiece", "joint": True, "lower_case": False,
         "spans": protector.get_config()}))
    assert pipeline.load_span_protector(str(folder)).get_config() == protector.get_config()


MULTI = [
    "Copy two of %(item_3)s to {0}. Copy one of %(item_1)s to {0}!  Plain words only",
    "Copy two of %(item_3)s to {0}",
    "Dr. Copy one. (Two) three?\u00a0Nine",
    "",
]


def test_sentence_by_sentence_in_python_and_in_the_saved_model(trained, tmp_path):
    model, tokenizer, protector = trained
    args = (SOURCE_LENGTH, TARGET_LENGTH)
    whole = pipeline.translate_texts(model, tokenizer, tokenizer, MULTI, *args, beam=0,
                                     spans=protector, split_sentences=False)
    split = pipeline.translate_texts(model, tokenizer, tokenizer, MULTI, *args, beam=0,
                                     spans=protector)
    # Each sentence translated alone, joined with the text's own spaces.
    from keras_xformer.text.sentences import split_sentences

    sentences, separators = split_sentences(MULTI)
    assert sentences.row_lengths().numpy().tolist() == [3, 1, 3, 1]
    for text, row, gaps, got in zip(MULTI, sentences.to_list(), separators.to_list(), split):
        alone = pipeline.translate_texts(model, tokenizer, tokenizer,
                                         [s.decode() for s in row], *args, beam=0,
                                         spans=protector, split_sentences=False)
        expected = alone[0] + "".join(g.decode() + t for g, t in zip(gaps, alone[1:]))
        assert got == expected, (text, got, expected)
    assert split[1] == whole[1] and split[3] == whole[3]  # one-sentence texts: unchanged
    assert "  " in split[0] and "\u00a0" in split[2]  # the texts' own white space
    import tensorflow as tf

    path = str(tmp_path / "serving_split")
    export_saved_model(path, model, tokenizer, tokenizer, *args, span_protector=protector,
                       split_sentences=True)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    served = [t.decode() for t in serve(text=tf.constant(MULTI))["translation"].numpy()]
    assert served == split
