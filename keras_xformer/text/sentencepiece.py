"""A SentencePiece tokenizer run by TensorFlow Text, with the Transformer's
reserved ids and exact round trips."""

import io
import os
import re

import tensorflow as tf
import tensorflow_text as tf_text

from keras_xformer.text.wordpiece import END_ID
from keras_xformer.text.wordpiece import PAD_ID
from keras_xformer.text.wordpiece import RESERVED_TOKENS
from keras_xformer.text.wordpiece import START_ID
from keras_xformer.text.wordpiece import UNK_ID
from keras_xformer.text.wordpiece import _finish_ids
from keras_xformer.text.wordpiece import _keep_before_end
from keras_xformer.text.wordpiece import _string_batches
from keras_xformer.text.wordpiece import _to_string_tensor


class SentencePieceTokenizer(tf.Module):
    """SentencePiece (Kudo and Richardson, 2018) inside TensorFlow.

    Trained with the `sentencepiece` package and run by
    `tensorflow_text.SentencepieceTokenizer`, so `tokenize` and `detokenize`
    also run in `tf.data` and inside an exported SavedModel (the model proto
    is part of the graph). Ids `[PAD]=0, [UNK]=1, [START]=2, [END]=3`, as
    `WordPieceTokenizer`. Text is NFC-normalized and otherwise kept as it is
    (no lower-casing, no NFKC), runs of whitespace become one space, and
    with byte fallback a character never seen in training becomes its UTF-8
    bytes, not [UNK]: `detokenize(tokenize(s)) == s` for NFC text with
    single spaces and no leading or trailing space.

    Args:
        model: the serialized SentencePiece model (`bytes`) or the path of a
            `.model` file.
        name: the `tf.Module` name.

    Example:

    >>> tokenizer = SentencePieceTokenizer.train(
    ...     ["Open the file %s.", "Fichier introuvable"] * 50, 60)
    >>> ids = tokenizer.tokenize(["Open %s."], sequence_length=16)
    >>> tokenizer.detokenize(ids).numpy()
    array([b'Open %s.'], dtype=object)
    """

    def __init__(self, model, name=None):
        super().__init__(name=name)
        if isinstance(model, (str, os.PathLike)):
            with open(model, "rb") as f:
                model = f.read()
        if not isinstance(model, bytes):
            raise TypeError(
                "`model` must be a serialized SentencePiece model (bytes) or "
                f"a path. Received: {type(model).__name__}"
            )
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_proto=model)
        tokens = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        tokens[: len(RESERVED_TOKENS)] = RESERVED_TOKENS
        if (processor.pad_id(), processor.unk_id(), processor.bos_id(),
                processor.eos_id()) != (PAD_ID, UNK_ID, START_ID, END_ID):
            raise ValueError(
                "The SentencePiece model must use pad_id=0, unk_id=1, bos_id=2, "
                "eos_id=3 (train it with `SentencePieceTokenizer.train`)."
            )
        self.__dict__["_model_proto"] = model
        self.__dict__["_tokens"] = tuple(tokens)
        self._tokenizer = tf_text.SentencepieceTokenizer(
            model=model, out_type=tf.int32, add_bos=False, add_eos=False
        )

    lower_case = False

    @property
    def vocabulary(self):
        return list(self._tokens)

    @property
    def vocabulary_size(self):
        return len(self._tokens)

    def id_to_token(self, token_id):
        token_id = int(token_id)
        if not 0 <= token_id < len(self._tokens):
            raise ValueError(
                f"Id {token_id} is out of range: the vocabulary has "
                f"{len(self._tokens)} tokens."
            )
        return self._tokens[token_id]

    def save(self, path):
        """Writes the SentencePiece model file."""
        with open(path, "wb") as f:
            f.write(self._model_proto)

    @classmethod
    def load(cls, path):
        return cls(path)

    @classmethod
    def train(cls, texts, vocabulary_size, model_type="unigram", byte_fallback=True,
              user_defined_symbols=()):
        """Trains a SentencePiece model on texts.

        Args:
            texts: a list of `str` or a `tf.data.Dataset` of strings.
            vocabulary_size: pieces, reserved ids and the 256 byte pieces
                (with `byte_fallback`) included; lowered to what the text
                can fill, raised when the characters alone need more.
            model_type: `"unigram"` (SentencePiece's default) or `"bpe"`.
            byte_fallback: unseen characters become byte pieces.
            user_defined_symbols: strings that are always one piece each
                (the sentinels of `keras_xformer.text.spans`), whether or
                not the text holds them.

        Returns:
            A `SentencePieceTokenizer`.
        """
        import sentencepiece

        if isinstance(user_defined_symbols, str) or not all(
                isinstance(x, str) and x for x in user_defined_symbols):
            raise ValueError("`user_defined_symbols` must be a list of non-empty strings. "
                             f"Received: {user_defined_symbols!r}")
        if int(vocabulary_size) != vocabulary_size or vocabulary_size < 8:
            raise ValueError(
                "`vocabulary_size` must be an integer >= 8. "
                f"Received: vocabulary_size={vocabulary_size}"
            )
        import unicodedata

        sentences = []
        for batch in _string_batches(texts):
            sentences += [unicodedata.normalize("NFC", t.decode("utf-8", "replace"))
                          for t in batch.numpy().tolist()]
        model = io.BytesIO()
        options = dict(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type=model_type,
            character_coverage=1.0,
            byte_fallback=byte_fallback,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=START_ID, eos_id=END_ID,
            # Keep the text as it is (the default NFKC rewrites characters
            # such as "…" and full-width forms, which would then not come
            # back); tokenize() applies NFC itself.
            normalization_rule_name="identity",
            split_digits=True,
            max_sentence_length=1 << 16,
            minloglevel=2,
        )
        if user_defined_symbols:
            options["user_defined_symbols"] = list(user_defined_symbols)
        size = int(vocabulary_size)
        grown = shrunk = False
        while True:
            try:
                sentencepiece.SentencePieceTrainer.train(vocab_size=size, **options)
                break
            except RuntimeError as error:
                message = str(error)
                required = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
                if required and not grown:
                    # The characters (and the 256 byte pieces) come first,
                    # as WordPieceTokenizer.train gives every character a token.
                    size = int(required.group(1)) + 64
                    grown = True
                elif re.search(r"value <= (\d+)", message) and not shrunk:
                    # A small corpus cannot fill the vocabulary.
                    size = int(re.search(r"value <= (\d+)", message).group(1))
                    shrunk = True
                else:
                    raise
                model = io.BytesIO()
                options["model_writer"] = model
                options["sentence_iterator"] = iter(sentences)
        return cls(model.getvalue())

    def tokenize(self, strings, sequence_length=None, add_start_end=False):
        """Same contract as `WordPieceTokenizer.tokenize`."""
        strings = _to_string_tensor(strings)
        if strings.shape.rank is not None and strings.shape.rank > 1:
            raise ValueError(
                "`strings` must be a scalar or a vector of strings. "
                f"Received shape: {strings.shape}"
            )
        scalar = strings.shape.rank == 0
        strings = tf.reshape(strings, [-1])
        strings = tf.strings.unicode_transcode(
            strings, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)
        strings = tf_text.normalize_utf8(strings, "NFC")
        ids = self._tokenizer.tokenize(strings)
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(ids)
        return _finish_ids(ids, sequence_length, add_start_end, scalar)

    def sample(self, texts, alpha, seed=0, nbest_size=-1):
        """One sampled segmentation of each text (subword regularization,
        Kudo 2018): a list of id lists, pieces only (no [START]/[END]).

        Training on a different segmentation of a sentence each epoch
        regularizes a model that sees a small corpus many times. Runs the
        `sentencepiece` library, not TensorFlow Text: its sampler takes a
        seed (`set_random_generator_seed`), TensorFlow Text's op does not,
        and a run must be repeatable. Text is NFC-normalized as `tokenize`
        does, so `alpha` -> infinity gives `tokenize`'s ids.

        Args:
            texts: a list of `str`.
            alpha: the smoothing of the sampling distribution, > 0: small
                values split more (on a catalogs corpus 0.1 made sentences
                1.9x longer, 0.3 1.17x, 1.0 1.01x).
            seed: seeds the sampler before this call.
            nbest_size: sample from this many best segmentations (-1: all).
        """
        import unicodedata

        import sentencepiece

        if not alpha > 0:
            raise ValueError(f"`alpha` must be positive. Received: alpha={alpha}")
        processor = sentencepiece.SentencePieceProcessor(model_proto=self._model_proto)
        sentencepiece.set_random_generator_seed(int(seed))
        texts = [unicodedata.normalize("NFC", t) for t in texts]
        # One thread: the samples then follow from the seed alone.
        return processor.encode(texts, enable_sampling=True, alpha=float(alpha),
                                nbest_size=int(nbest_size), num_threads=1)

    def detokenize(self, ids):
        """Same contract as `WordPieceTokenizer.detokenize`."""
        kept, scalar = _keep_before_end(ids, len(self._tokens))
        text = self._tokenizer.detokenize(kept)
        return text[0] if scalar else text

    def __call__(self, strings, sequence_length=None, add_start_end=False):
        return self.tokenize(strings, sequence_length, add_start_end)
