import os
import sys

import keras
import numpy as np
import pytest

from keras_xformer.data import encode_source
from keras_xformer.datasets import number_words
from keras_xformer.export import ctranslate2_score
from keras_xformer.export import ctranslate2_translate
from keras_xformer.export import export_ctranslate2
from keras_xformer.models import Transformer
from keras_xformer.text import WordPieceTokenizer

pytestmark = pytest.mark.tensorflow_only  # TF Text tokenizers / the TensorFlow pipeline

ctranslate2 = pytest.importorskip("ctranslate2")

SOURCE_LENGTH, TARGET_LENGTH = 14, 12

# Every pair of (norm, embeddings, output, positions) options appears in
# at least one configuration.
CONFIGS = {
    "post_separate_tied_sinusoidal": dict(),
    "pre_shared_untied_learned": dict(norm_first=True, share_embeddings=True,
                                      tie_output_embeddings=False, positional="learned"),
    "post_shared_tied_learned": dict(share_embeddings=True, positional="learned"),
    "pre_separate_untied_sinusoidal": dict(norm_first=True, tie_output_embeddings=False),
    "post_separate_untied_learned": dict(tie_output_embeddings=False, positional="learned"),
    "pre_shared_tied_sinusoidal": dict(norm_first=True, share_embeddings=True),
}


@pytest.fixture(scope="module")
def data():
    train, _, test = number_words.load_data(train_size=300, validation_size=1, test_size=6)
    source_tokenizer = WordPieceTokenizer.train(train[0], 150)
    target_tokenizer = WordPieceTokenizer.train(train[1], 150)
    shared_tokenizer = WordPieceTokenizer.train(train[0] + train[1], 200)
    return source_tokenizer, target_tokenizer, shared_tokenizer, test[0]


def make_model(config, source_tokenizer, target_tokenizer, seed=0):
    keras.utils.set_random_seed(seed)
    model = Transformer(source_tokenizer.vocabulary_size, target_tokenizer.vocabulary_size,
                        num_layers=2, hidden_dim=32, num_heads=4, intermediate_dim=48,
                        dropout=0.0, max_length=24, **config)
    model.build()
    # Every weight random (biases and LayerNorm betas start at 0, gammas at
    # 1): a weight written to the wrong place then changes the scores.
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        scale = 0.5 if len(variable.shape) > 1 else 0.2
        base = 1.0 if variable.path.endswith("gamma") else 0.0
        variable.assign((base + scale * rng.standard_normal(variable.shape)).astype("float32"))
    return model


def tokenizers_for(config, data):
    source_tokenizer, target_tokenizer, shared_tokenizer, _ = data
    if config.get("share_embeddings"):
        return shared_tokenizer, shared_tokenizer
    return source_tokenizer, target_tokenizer


def our_log_probs(model, source_ids, target_ids):
    """Log-probability of each non-padding target id (teacher forcing)."""
    inputs = np.concatenate([np.full((len(target_ids), 1), 2), target_ids[:, :-1]], 1)
    logits = model((source_ids, inputs), training=False)
    log_probs = keras.ops.convert_to_numpy(keras.ops.log_softmax(logits, axis=-1))
    return [log_probs[b, np.arange((row != 0).sum()), row[row != 0]]
            for b, row in enumerate(target_ids)]


def random_targets(rng, batch, vocabulary_size):
    """Random target rows of different lengths, each ending with [END]."""
    targets = np.zeros((batch, TARGET_LENGTH), "int32")
    for row in range(batch):
        length = rng.integers(1, TARGET_LENGTH)
        targets[row, : length - 1] = rng.integers(4, vocabulary_size, length - 1)
        targets[row, length - 1] = 3
    return targets


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_scores_and_greedy_tokens_match(name, data, tmp_path):
    config = CONFIGS[name]
    source_tokenizer, target_tokenizer = tokenizers_for(config, data)
    texts = data[3]
    model = make_model(config, source_tokenizer, target_tokenizer)
    path = export_ctranslate2(str(tmp_path / "ct2"), model, source_tokenizer, target_tokenizer)
    assert os.path.exists(os.path.join(path, "model.bin"))
    translator = ctranslate2.Translator(path, intra_threads=1)

    # Scores on a padded batch: sources and targets of different lengths.
    source_ids = encode_source(source_tokenizer, texts, SOURCE_LENGTH).numpy()
    assert (source_ids == 0).any(), "the batch must hold padding"
    target_ids = random_targets(np.random.default_rng(1), len(texts),
                                target_tokenizer.vocabulary_size)
    ours = our_log_probs(model, source_ids, target_ids)
    theirs = ctranslate2_score(path, source_ids, target_ids, translator=translator)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, atol=1e-4, rtol=0)

    # Greedy tokens, and the same text through the tokenizers.
    generated = model.generate(source_ids, max_length=TARGET_LENGTH, jit_compile=False)
    assert len({tuple(row) for row in generated}) > 1, "outputs must vary"
    ids = ctranslate2_translate(path, source_tokenizer, target_tokenizer, texts,
                                max_length=TARGET_LENGTH, max_source_length=SOURCE_LENGTH,
                                translator=translator, return_ids=True)
    np.testing.assert_array_equal(ids, generated)
    strings = ctranslate2_translate(path, source_tokenizer, target_tokenizer, texts,
                                    max_length=TARGET_LENGTH,
                                    max_source_length=SOURCE_LENGTH, translator=translator)
    expected = [t.decode() for t in target_tokenizer.detokenize(generated).numpy()]
    assert strings == expected


def test_int8_export_is_smaller_and_close(data, tmp_path):
    source_tokenizer, target_tokenizer, _, texts = data
    model = make_model({"tie_output_embeddings": False}, source_tokenizer, target_tokenizer)
    float_path = export_ctranslate2(str(tmp_path / "f32"), model, source_tokenizer,
                                    target_tokenizer)
    int8_path = export_ctranslate2(str(tmp_path / "int8"), model, source_tokenizer,
                                   target_tokenizer, quantization="int8")
    size = lambda p: os.path.getsize(os.path.join(p, "model.bin"))  # noqa: E731
    assert size(int8_path) < 0.5 * size(float_path)
    source_ids = encode_source(source_tokenizer, texts, SOURCE_LENGTH).numpy()
    target_ids = random_targets(np.random.default_rng(2), len(texts),
                                target_tokenizer.vocabulary_size)
    ours = np.concatenate(our_log_probs(model, source_ids, target_ids))
    theirs = np.concatenate(ctranslate2_score(int8_path, source_ids, target_ids))
    # int8 weights and activations at width 32: close, not equal.
    assert np.abs(theirs - ours).mean() < 0.1 * np.abs(ours).mean()
    assert not np.allclose(theirs, ours, atol=1e-4)


def test_wrong_layout_is_caught(data, tmp_path):
    source_tokenizer, target_tokenizer, _, _ = data
    model = make_model({"tie_output_embeddings": False}, source_tokenizer, target_tokenizer)
    dense = model.output_projection
    # The (vocabulary, width) layout CTranslate2 reads: loaded as it is,
    # the engine would compute NaN.
    # (Set around Keras' tracker, which locks a built layer's state.)
    object.__setattr__(dense, "_kernel", keras.Variable(np.transpose(dense.kernel.numpy())))
    assert dense.kernel.shape == (target_tokenizer.vocabulary_size, 32)
    with pytest.raises(ValueError, match="output projection kernel: expected shape"):
        export_ctranslate2(str(tmp_path / "bad"), model, source_tokenizer, target_tokenizer)
    assert not os.path.exists(tmp_path / "bad" / "model.bin")


def test_bad_arguments(data, tmp_path, monkeypatch):
    source_tokenizer, target_tokenizer, _, texts = data
    model = make_model({}, source_tokenizer, target_tokenizer)
    with pytest.raises(ValueError, match="target_vocabulary_size"):
        export_ctranslate2(str(tmp_path / "a"), model, source_tokenizer, source_tokenizer)
    with pytest.raises(ValueError, match="quantization"):
        export_ctranslate2(str(tmp_path / "a"), model, source_tokenizer, target_tokenizer,
                           quantization="int4")
    with pytest.raises(ValueError, match="Transformer"):
        export_ctranslate2(str(tmp_path / "a"), object(), source_tokenizer, target_tokenizer)
    with pytest.raises(ValueError, match="list of strings"):
        ctranslate2_translate(str(tmp_path / "a"), source_tokenizer, target_tokenizer, "one")
    monkeypatch.setitem(sys.modules, "ctranslate2", None)
    with pytest.raises(ImportError, match=r"pip install keras_xformer\[ctranslate2\]"):
        export_ctranslate2(str(tmp_path / "a"), model, source_tokenizer, target_tokenizer)
