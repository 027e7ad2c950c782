import numpy as np
import pytest

from keras_xformer.data import choose_length
from keras_xformer.data import encode_source
from keras_xformer.data import encode_target
from keras_xformer.data import make_dataset
from keras_xformer.text import WordPieceTokenizer

# TensorFlow-only feature (tests/conftest.py): skipped on JAX and PyTorch.
pytestmark = pytest.mark.tensorflow_only

TEXTS = ["one two three", "four", "five six seven eight nine ten", ""]


def tokenizer():
    return WordPieceTokenizer.train(TEXTS * 20, 100)


def test_encode_source_has_exact_width_and_keeps_end():
    tok = tokenizer()
    ids = encode_source(tok, TEXTS, 4).numpy()
    assert ids.shape == (4, 4)
    np.testing.assert_array_equal(ids[0, :4], [*tok.tokenize(["one two three"]).to_list()[0], 3])
    assert ids[2, -1] == 3  # truncated, [END] kept
    assert ids[3, 0] == 3 and (ids[3, 1:] == 0).all()


def test_choose_length_covers_the_longest_text():
    tok = tokenizer()
    length = choose_length(tok, TEXTS)
    ids = encode_source(tok, TEXTS, length).numpy()
    assert ids[2, -1] == 3 and (ids[:, -1] != 0).sum() == 1  # longest fits exactly


def test_dataset_is_teacher_forced():
    tok = tokenizer()
    data = make_dataset(TEXTS, TEXTS, tok, tok, 8, 8, batch_size=2, shuffle=False)
    (source, target_in), target_out = next(iter(data))
    full = encode_target(tok, TEXTS[:2], 8).numpy()
    assert source.shape == (2, 8) and target_in.shape == (2, 8) and target_out.shape == (2, 8)
    np.testing.assert_array_equal(target_in, full[:, :-1])
    np.testing.assert_array_equal(target_out, full[:, 1:])
    assert (target_in.numpy()[:, 0] == 2).all()


def test_bucketing_yields_the_same_examples_as_plain_padding():
    rng = np.random.default_rng(0)
    words = "one two three four five six seven eight nine ten".split()
    sources = [" ".join(rng.choice(words, rng.integers(1, 12))) for _ in range(60)]
    targets = [" ".join(reversed(s.split())) for s in sources]
    tok = WordPieceTokenizer.train(sources, 50)

    def examples(dataset):
        found = []
        for (source, target_in), target_out in dataset:
            for s, ti, to in zip(source.numpy(), target_in.numpy(), target_out.numpy()):
                # Decoder inputs count where a label does: an [END] fed at a
                # padded label's position changes nothing and may be trimmed.
                found.append((tuple(s[s != 0]), tuple(ti[to != 0]), tuple(to[to != 0])))
        return sorted(found)

    plain = make_dataset(sources, targets, tok, tok, 13, 13, batch_size=8, shuffle=False)
    bucketed = make_dataset(sources, targets, tok, tok, 13, 13, batch_size=8, shuffle=False,
                            bucket_boundaries=[4, 8])
    assert examples(plain) == examples(bucketed)
    widths = [int(target_out.shape[1]) for _, target_out in bucketed]
    assert min(widths) < 13  # short batches are not padded to the longest sentence
