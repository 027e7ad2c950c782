import numpy as np
import pytest

from keras_xformer.data import choose_length
from keras_xformer.data import encode_source
from keras_xformer.data import encode_target
from keras_xformer.data import bucket_batch_sizes
from keras_xformer.data import bucketed_steps
from keras_xformer.data import make_dataset
from keras_xformer.data import token_lengths
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


def test_token_batches_hold_about_the_same_number_of_tokens():
    rng = np.random.default_rng(1)
    words = "one two three four five six seven eight nine ten".split()
    sources = [" ".join(rng.choice(words, rng.integers(1, 30))) for _ in range(300)]
    tok = WordPieceTokenizer.train(sources, 50)
    dataset = make_dataset(sources, sources, tok, tok, 32, 32, shuffle=False,
                           bucket_boundaries=[4, 8, 16], tokens_per_batch=128)
    seen = 0
    for (source, target_in), target_out in dataset:
        seen += int(source.shape[0])
        # A bucket's batch size is tokens_per_batch // its upper bound.
        assert source.shape[0] * target_out.shape[1] <= 128 + 16
    assert seen == 300
    # `fit(steps_per_epoch=...)` on the repeated dataset relies on this count.
    lengths = token_lengths(tok, sources)
    batches = sum(1 for _ in dataset)
    assert bucketed_steps(lengths, lengths, [4, 8, 16],
                          bucket_batch_sizes([4, 8, 16], 32, 64, 128)) == batches
    assert bucket_batch_sizes([4, 8, 16], 32, 64, 128) == [32, 16, 8, 3]
    assert bucket_batch_sizes([4, 8], 32, 64) == [64, 64, 64]


def test_streamed_corpus_splits_by_hash_and_batches_by_tokens(tmp_path):
    from keras_xformer.data import make_stream_dataset
    from keras_xformer.data import sample_texts
    from keras_xformer.data import stream_pairs

    words = "one two three four five six seven eight nine ten".split()
    rng = np.random.default_rng(2)
    lines = [" ".join(rng.choice(words, rng.integers(1, 9))) + f" {i}" for i in range(400)]
    path = tmp_path / "big.tsv"
    path.write_text("".join(f"{s}\t{s.upper()}\textra\n" for s in lines) + "\n",
                    encoding="utf-8")
    splits = {name: [(s.numpy().decode(), t.numpy().decode())
                     for s, t in stream_pairs(str(path), name)]
              for name in ("train", "validation", "test")}
    found = sorted(p for pairs in splits.values() for p in pairs)
    assert found == sorted((s, s.upper()) for s in lines)  # each line once, third column dropped
    assert 5 <= len(splits["test"]) <= 45 and 5 <= len(splits["validation"]) <= 45
    sources, targets = sample_texts(str(path), 100)
    assert len(sources) == 100 and targets[0] == sources[0].upper()
    tok = WordPieceTokenizer.train(sources + targets + lines, 100, lower_case=False)
    data = make_stream_dataset(stream_pairs(str(path)), tok, tok, 12, 12,
                               tokens_per_batch=96, shuffle_buffer=50)
    seen = 0
    for (source, target_in), target_out in data:
        assert source.shape[0] * target_out.shape[1] <= 96 + 12
        seen += int(source.shape[0])
    assert 0 < seen <= len(splits["train"])


def test_subword_sampling_draws_new_segmentations_every_pass_and_keeps_the_text():
    from keras_xformer.text import SentencePieceTokenizer

    rng = np.random.default_rng(3)
    words = ("Open the file %s permission denied Delete items Show Hidden Files "
             "authentication failed Fichier enregistré introuvable").split()
    sources = sorted({" ".join(rng.choice(words, rng.integers(1, 9))) for _ in range(200)})
    targets = [s.upper() for s in sources]
    sp = SentencePieceTokenizer.train(sources + targets, 120)
    usual = {s: tuple(ids) for s, ids in zip(sources, sp.tokenize(sources).to_list())}
    length = max(len(ids) for ids in usual.values()) + 1  # the longest fits exactly

    def dataset(seed):
        return make_dataset(sources, targets, sp, sp, length, length, seed=seed,
                            bucket_boundaries=[4, 8, 16], tokens_per_batch=128,
                            subword_alpha=0.1, subword_samples=4)

    def one_pass(data):
        found = {}
        for (source, target_in), target_out in data:
            assert source.shape[1] <= length and target_out.shape[1] <= length
            for s, ti, to in zip(source.numpy(), target_in.numpy(), target_out.numpy()):
                s, ti, to = s[s != 0], ti[ti != 0], to[to != 0]
                assert s[-1] == 3 and ti[0] == 2 and to[-1] == 3  # [END], [START]
                np.testing.assert_array_equal(ti[1:len(to)], to[:-1])  # teacher forcing
                text = sp.detokenize(s[None]).numpy()[0].decode()
                assert text not in found
                # The text comes back exactly, whatever the segmentation.
                assert sp.detokenize(to[None]).numpy()[0].decode() == text.upper()
                found[text] = (tuple(s[:-1]), tuple(to[:-1]))
        assert sorted(found) == sources  # every pair once per pass
        return found

    data = dataset(seed=1)
    first, second = one_pass(data), one_pass(data)
    assert sum(first[s][0] != usual[s] for s in sources) > len(sources) // 10
    assert sum(first[s] != second[s] for s in sources) > len(sources) // 10
    assert one_pass(dataset(seed=1)) == first  # a seed gives the same draws
    assert one_pass(dataset(seed=2)) != first

    with pytest.raises(ValueError, match="alpha"):
        sp.sample(sources, 0.0)
    wordpiece = WordPieceTokenizer.train(sources, 60, lower_case=False)
    with pytest.raises(ValueError, match="SentencePiece"):
        make_dataset(sources, sources, wordpiece, wordpiece, 40, 40,
                     bucket_boundaries=[8], subword_alpha=0.2)
