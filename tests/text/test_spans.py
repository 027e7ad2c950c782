"""Protected spans: masking, unmasking, the tokenizers' sentinels."""

import pytest
import tensorflow as tf

from keras_xformer.text import SentencePieceTokenizer
from keras_xformer.text import WordPieceTokenizer
from keras_xformer.text.spans import SpanProtector
from keras_xformer.text.spans import protect
from keras_xformer.text.spans import restore
from keras_xformer.text.spans import sentinels

pytestmark = pytest.mark.tensorflow_only

S0, S1, S2 = sentinels(3)

REAL = [
    "%(setting_type)s updated.",
    "CWE %s",
    "Set TRAC_ENV before running pg_backup_start().",
    "Use epub_contributor or {0} and {name} with <b>bold</b> and --long-option.",
    # Regex-special characters and backslashes inside spans.
    r'See <a href="C:\dir\1$">%(a.b)s</a> and {a[0]} in C:\path\to $HOME %s',
    "Delete %(name)s from %(name)s?",  # a repeated span shares its sentinel
    "",
    "  ",
    "Plain text, no spans.",
    "日本語のファイル %s を {name} で開く",  # non-Latin scripts
    "Файл %(path)s не найден",
    "label_contact_phone",  # a whole-source message id: translated, not masked
]


def test_round_trip_on_real_strings():
    masked, spans = protect(REAL)
    assert restore(masked, spans) == REAL
    assert masked[0] == f"{S0} updated." and spans[0] == ["%(setting_type)s"]
    assert masked[1] == f"CWE {S0}"
    assert spans[2] == ["TRAC_ENV", "pg_backup_start()"]
    assert spans[4] == [r'<a href="C:\dir\1$">', "%(a.b)s", "</a>", "{a[0]}", "$HOME", "%s"]
    assert masked[5] == f"Delete {S0} from {S0}?" and spans[5] == ["%(name)s"]
    assert masked[6] == "" and spans[6] == []
    assert masked[9].startswith("日本語のファイル " + S0)
    assert masked[11] == "label_contact_phone" and spans[11] == []


def test_regex_specials_and_backslashes_restore_verbatim():
    # Spans are put back by gathering strings, never as a regex rewrite:
    # "\1" and "$" inside a span must come back as they are.
    masked, spans = protect([r'Value <a title="\1 \0 $1">%(x.y)s</a> costs $HOME \\ %d'])
    assert spans[0][0] == r'<a title="\1 \0 $1">'
    translated = ["\\1 " + "".join(sentinels(5)) + " \\0"]
    assert restore(translated, spans) == [r'\1 <a title="\1 \0 $1">%(x.y)s</a>$HOME%d \0']


def test_batches_without_any_piece():
    assert protect([]) == ([], [])
    assert protect(["", ""]) == (["", ""], [[], []])
    assert restore([], []) == [] and restore([""], [[]]) == [""]


def test_more_spans_than_sentinels_stay_text():
    text = " ".join(f"%(v{i})s" for i in range(20))
    masked, spans = protect([text], max_spans=16)
    assert len(spans[0]) == 16
    assert masked[0].endswith("%(v16)s %(v17)s %(v18)s %(v19)s")
    assert restore(masked, spans) == [text]


def test_unknown_sentinels_are_dropped_and_users_sentinels_removed():
    assert restore([f"a {S1} b {S0}"], [["X"]]) == ["a  b X"]
    masked, spans = protect([f"odd{S0}char %s"])
    assert masked == [f"oddchar {S0}"] and spans == [["%s"]]


def test_targets_are_masked_longest_span_first():
    protector = SpanProtector()
    sources, targets = protector.protect_pairs(
        ["Run %(name)s then %(name)s_x in TRAC_ENV"],
        ["Lancez %(name)s_x puis %(name)s dans TRAC_ENV"])
    # Spans in order: %(name)s, TRAC_ENV; "%(name)s_x" is not one span of
    # the source (the python-format kind ends at "s"), so only the shorter
    # span inside it is masked.
    assert sources == [f"Run {S0} then {S0}_x in {S1}"]
    assert targets == [f"Lancez {S0}_x puis {S0} dans {S1}"]
    longest = protector.protect_target("a {ab} b {a}", ["{a}", "{ab}"])
    assert longest == f"a {S1} b {S0}"


def test_graph_mode_matches_eager():
    protector = SpanProtector()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def round_trip(text):
        masked, spans = protector.protect(text)
        return masked, protector.restore(masked, spans)

    masked, restored = round_trip(tf.constant(REAL))
    eager_masked, _ = protector.protect(REAL)
    assert masked.numpy().tolist() == eager_masked.numpy().tolist()
    assert [t.decode() for t in restored.numpy()] == REAL


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="empty string"):
        SpanProtector(pattern="x*")
    with pytest.raises(ValueError, match="RE2"):
        SpanProtector(pattern="(unclosed")
    with pytest.raises(ValueError, match="max_spans"):
        SpanProtector(max_spans=0)
    with pytest.raises(ValueError, match="not one string"):
        protect("one string")
    with pytest.raises(ValueError, match="spans"):
        restore(["a"], "not lists")
    with pytest.raises(ValueError, match="one row per text"):
        restore(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="must hold strings"):
        protect([1, 2])


@pytest.mark.parametrize("kind", ["sentencepiece", "wordpiece"])
def test_sentinel_is_one_token(kind):
    masked, _ = protect(["Open %s in {name}", "Close %(file)s now", "Item %d of %d"] * 20)
    texts = masked + ["Plain words (here) and there, xy"] * 20
    symbols = sentinels(16)
    if kind == "sentencepiece":
        tokenizer = SentencePieceTokenizer.train(texts, 300, user_defined_symbols=symbols)
    else:
        tokenizer = WordPieceTokenizer.train(texts, 300, lower_case=False,
                                             user_defined_symbols=symbols)
    vocabulary = tokenizer.vocabulary
    # Every sentinel is in the vocabulary, even those the text never held.
    for symbol in symbols:
        assert symbol in vocabulary
    for text in (f"Open {S0} in {S1}", f"({S2})", f"x{S0}y", S1):
        ids = tokenizer.tokenize([text]).to_list()[0]
        pieces = [tokenizer.id_to_token(i) for i in ids]
        for symbol in (S0, S1, S2):
            if symbol in text:
                assert [p for p in pieces if symbol in p] in ([symbol], ["##" + symbol]), pieces
        assert tokenizer.detokenize(tf.ragged.constant([ids])).numpy()[0].decode() == text


def test_sentinel_tokens_rejected_when_wordpiece_cannot_keep_them():
    with pytest.raises(ValueError, match="single characters"):
        WordPieceTokenizer.train(["a b"], 20, user_defined_symbols=["<x>"])
