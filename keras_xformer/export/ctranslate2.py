"""Export to CTranslate2, the C++ inference engine behind OpenNMT,
argos-translate and faster-whisper (`pip install keras_xformer[ctranslate2]`).

CTranslate2 holds our `Transformer` exactly: a `ctranslate2.specs.TransformerSpec`
filled from the Keras weights gives the same token log-probabilities
(within float32 rounding). It loads weights without checking their
shapes (a transposed output kernel loads and yields NaN), so every array
is checked here before it is written.
"""

import json
import os

import numpy as np

QUANTIZATIONS = (None, "float32", "float16", "bfloat16", "int16", "int8",
                 "int8_float32", "int8_float16", "int8_bfloat16")

# CTranslate2's reserved tokens, in our reserved ids' order:
# [PAD]=0, [UNK]=1, [START]=2, [END]=3.
CT2_SPECIAL_TOKENS = ("<blank>", "<unk>", "<s>", "</s>")

# The position table written for sinusoidal models without `max_length`.
DEFAULT_MAX_POSITIONS = 1024


def _import_ctranslate2():
    try:
        import ctranslate2
        from ctranslate2.specs import common_spec
        from ctranslate2.specs import transformer_spec
    except ImportError as error:
        raise ImportError(
            "Exporting to CTranslate2 needs the `ctranslate2` package: "
            "`pip install keras_xformer[ctranslate2]` (or `pip install "
            "ctranslate2`)."
        ) from error
    return ctranslate2, common_spec, transformer_spec


def ctranslate2_vocabulary(tokenizer):
    """The tokenizer's vocabulary as the exported model names it.

    Our reserved `[PAD] [UNK] [START] [END]` (ids 0-3) become CTranslate2's
    `<blank> <unk> <s> </s>`; every other token keeps its string, so id `i`
    is the same token in both.

    Args:
        tokenizer: a `keras_xformer.text.WordPieceTokenizer`.

    Returns:
        A list of `str`, one per id.
    """
    tokens = list(CT2_SPECIAL_TOKENS) + list(tokenizer.vocabulary[4:])
    seen = set()
    for token_id, token in enumerate(tokens):
        if token in seen:
            raise ValueError(
                f"Token {token!r} (id {token_id}) appears twice in the "
                "vocabulary as CTranslate2 would read it (ids 0-3 are "
                f"renamed {list(CT2_SPECIAL_TOKENS)}). Retrain the "
                "tokenizer without that token."
            )
        seen.add(token)
    return tokens


class _Checker:
    """Reads a Keras variable as float32 numpy and checks its shape, since
    CTranslate2 itself never does."""

    def __call__(self, what, variable, shape):
        value = np.asarray(
            variable.numpy() if hasattr(variable, "numpy") else variable,
            dtype=np.float32,
        )
        if tuple(value.shape) != tuple(shape):
            raise ValueError(
                f"{what}: expected shape {tuple(shape)}, found "
                f"{tuple(value.shape)}. The layout does not match what "
                "CTranslate2 reads; nothing was written."
            )
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{what}: holds NaN or infinite values.")
        return value


def _attention_weights(layer):
    """`(q, k, v, o)` as `(kernel, bias)` pairs of one of our attention
    layers. Kernels: `(width, heads, head_dim)` for q/k/v, `(heads,
    head_dim, width)` for the output (the `keras.layers.MultiHeadAttention`
    layout, whether stored as variables or as `EinsumDense` sublayers)."""
    names = ("query", "key", "value", "output")
    if all(hasattr(layer, f"{n}_kernel") for n in names):
        return [(getattr(layer, f"{n}_kernel"), getattr(layer, f"{n}_bias", None))
                for n in names]
    if all(hasattr(layer, f"_{n}_dense") for n in names):
        dense = [getattr(layer, f"_{n}_dense") for n in names]
        return [(d.kernel, getattr(d, "bias", None)) for d in dense]
    raise ValueError(
        f"Cannot find the projection weights of attention layer "
        f"{layer.name!r} (expected `query_kernel`... or `_query_dense`...)."
    )


def _linear(spec, check, what, kernel, bias, in_dim, out_dim):
    # Keras kernels are (in, out); CTranslate2's are (out, in).
    spec.weight = np.ascontiguousarray(check(f"{what} kernel", kernel, (in_dim, out_dim)).T)
    if bias is not None:
        spec.bias = check(f"{what} bias", bias, (out_dim,))


def _layer_norm(spec, check, what, layer, width):
    spec.gamma = check(f"{what} gamma", layer.gamma, (width,))
    spec.beta = check(f"{what} beta", layer.beta, (width,))


def _attention(spec, check, what, layer, width, num_heads, self_attention):
    head_dim = width // num_heads
    (qk, qb), (kk, kb), (vk, vb), (ok, ob) = _attention_weights(layer)
    projections = []
    for name, kernel, bias in (("query", qk, qb), ("key", kk, kb), ("value", vk, vb)):
        k = check(f"{what} {name} kernel", kernel, (width, num_heads, head_dim))
        b = None if bias is None else check(f"{what} {name} bias", bias, (num_heads, head_dim))
        projections.append((k.reshape(width, width).T,
                            None if b is None else b.reshape(width)))
    output = check(f"{what} output kernel", ok, (num_heads, head_dim, width))
    # Self-attention is one fused Q;K;V linear; cross-attention is Q, then
    # a fused K;V over the encoder output.
    groups = [projections] if self_attention else [projections[:1], projections[1:]]
    for linear, group in zip(spec.linear, groups):
        linear.weight = np.ascontiguousarray(np.concatenate([w for w, _ in group]))
        if all(b is not None for _, b in group):
            linear.bias = np.concatenate([b for _, b in group])
    spec.linear[-1].weight = np.ascontiguousarray(output.reshape(width, width).T)
    if ob is not None:
        spec.linear[-1].bias = check(f"{what} output bias", ob, (width,))


def _feed_forward(spec, check, what, layer, width, intermediate_dim):
    _linear(spec.linear_0, check, f"{what} inner", layer.inner_dense.kernel,
            layer.inner_dense.bias, width, intermediate_dim)
    _linear(spec.linear_1, check, f"{what} output", layer.output_dense.kernel,
            layer.output_dense.bias, intermediate_dim, width)


def _position_table(embedding, check, what, width, max_positions):
    """Our position table, written out: our sinusoid interleaves sin and cos
    where CTranslate2's own concatenates them, so it must never fall back
    to its built-in one."""
    from keras_xformer.layers.positional_encoding import LearnedPositionalEncoding
    from keras_xformer.layers.positional_encoding import sinusoid

    encoding = embedding.position_encoding
    if isinstance(encoding, LearnedPositionalEncoding):
        return check(f"{what} position table", encoding.position_embeddings,
                     (encoding.max_length, width))
    table = sinusoid(np.arange(max_positions), width,
                     max_wavelength=encoding.max_wavelength)
    return check(f"{what} position table", table, (max_positions, width))


def _embeddings(spec_owner, check, what, embedding, vocabulary_size, width, max_positions):
    table = check(f"{what} token embeddings", embedding.embeddings, (vocabulary_size, width))
    embeddings = spec_owner.embeddings
    (embeddings[0] if isinstance(embeddings, list) else embeddings).weight = table
    # CTranslate2 multiplies by sqrt(width) itself: the table goes in unscaled.
    spec_owner.scale_embeddings = bool(embedding.scale_embeddings)
    spec_owner.position_encodings.encodings = _position_table(
        embedding, check, what, width, max_positions)
    return table


def _check_model(model, source_tokenizer, target_tokenizer):
    from keras_xformer.models import Transformer

    if not isinstance(model, Transformer):
        raise ValueError(
            f"Expected a keras_xformer Transformer; received {type(model).__name__}."
        )
    for side, tokenizer, size in (
        ("source", source_tokenizer, model.source_vocabulary_size),
        ("target", target_tokenizer, model.target_vocabulary_size),
    ):
        if not hasattr(tokenizer, "vocabulary"):
            raise ValueError(
                f"`{side}_tokenizer` must be a WordPieceTokenizer (it has no "
                f"`vocabulary`); received {type(tokenizer).__name__}."
            )
        if len(tokenizer.vocabulary) != size:
            raise ValueError(
                f"The {side} tokenizer has {len(tokenizer.vocabulary)} tokens "
                f"but the model's {side}_vocabulary_size is {size}. Pass the "
                "tokenizers the model was trained with."
            )
    if (model.start_token_id, model.end_token_id) != (2, 3):
        raise ValueError(
            "CTranslate2 starts and ends sequences with <s> (id 2) and </s> "
            f"(id 3); this model uses start_token_id={model.start_token_id} "
            f"and end_token_id={model.end_token_id}."
        )
    blocks = list(model.encoder.blocks) + list(model.decoder.blocks)
    epsilons = {float(b.layer_norm_epsilon) for b in blocks}
    if len(epsilons) != 1:
        raise ValueError(
            "CTranslate2 has one layer-norm epsilon per model; the blocks "
            f"use {sorted(epsilons)}."
        )
    import keras

    activations = {keras.activations.serialize(b.activation) for b in blocks}
    activations = {a if isinstance(a, str) else a.get("config", a) for a in activations}
    if activations != {"relu"}:
        raise ValueError(
            "Only the ReLU feed-forward network is exported to CTranslate2; "
            f"this model uses {sorted(map(str, activations))}."
        )
    return epsilons.pop()


def export_ctranslate2(path, model, source_tokenizer, target_tokenizer,
                       quantization=None, max_positions=None):
    """Writes a CTranslate2 model directory (`model.bin`, vocabularies,
    `config.json`) of a trained `Transformer`.

    Post-LN and pre-LN (`norm_first`), shared or separate embeddings, tied
    or untied output projection, sinusoidal or learned positions. Every
    weight's shape is checked before anything is written (CTranslate2 does
    not check them and silently computes garbage from a wrong layout); a
    mismatch is a `ValueError`.

    What a user gets from the engine (`ctranslate2.Translator`):

    - Tokens: ids 0-3 are named `<blank> <unk> <s> </s>`; other tokens keep
      the tokenizer's strings (`ctranslate2_vocabulary`). The source needs
      no `</s>`: the model appends it (`add_source_eos`), as our
      `encode_source` does. `ctranslate2_translate` does all of this from
      our tokenizers.
    - Ending: our decoding also ends a sequence on [PAD] (id 0); pass
      `end_token=["</s>", "<blank>"]` and `min_decoding_length=0` to
      `translate_batch` to get `generate`'s greedy tokens exactly.
    - Beam search: the length penalty differs. Ours (`generate(...,
      length_penalty=alpha)`) is Wu et al.'s, `log P / ((5 + len) / 6) **
      alpha`; CTranslate2's `length_penalty=alpha` divides by `len **
      alpha` (its default `alpha=1` is the per-token average). Both are
      normalizations of the same log-probability, so with `alpha=0` they
      agree; otherwise beam results can differ on close calls. CTranslate2
      also stops a beam search once `beam_size` hypotheses have finished,
      where ours runs until every beam has, so beam outputs are not
      token-for-token equal (greedy outputs are).
    - Quantization is CTranslate2's: weights are stored quantized and the
      engine computes in that type (`"int8"`: int8 matmuls, the fastest
      on CPU; `"int8_float32"`: int8 weights, float32 for the rest).

    Args:
        path: the directory to write (created; its model files replaced).
        model: a `keras_xformer.models.Transformer`.
        source_tokenizer, target_tokenizer: the `WordPieceTokenizer`s the
            model was trained with (their sizes must equal the model's
            vocabulary sizes).
        quantization: `None` (float32) or one of CTranslate2's
            `"int8"`, `"int8_float32"`, `"int8_float16"`, `"int8_bfloat16"`,
            `"int16"`, `"float16"`, `"bfloat16"`, `"float32"`.
        max_positions: positions in the written sinusoid table (learned
            tables are written whole); default the model's `max_length`,
            else 1024. CTranslate2 cannot go past the table.

    Returns:
        `path`.

    Example:

    ```python
    export_ctranslate2("translator_ct2", model, src_tok, tgt_tok, "int8")
    ctranslate2_translate("translator_ct2", src_tok, tgt_tok, ["twenty-one"])
    ```
    """
    ctranslate2, common_spec, transformer_spec = _import_ctranslate2()
    del ctranslate2
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be one of {QUANTIZATIONS}; received {quantization!r}."
        )
    epsilon = _check_model(model, source_tokenizer, target_tokenizer)
    if max_positions is None:
        max_positions = model.max_length or DEFAULT_MAX_POSITIONS
    if not isinstance(max_positions, int) or max_positions <= 0:
        raise ValueError(f"`max_positions` must be a positive int; received {max_positions!r}.")
    source_tokens = ctranslate2_vocabulary(source_tokenizer)
    target_tokens = ctranslate2_vocabulary(target_tokenizer)
    if not model.built:
        model.build()

    width, heads, ff = model.hidden_dim, model.num_heads, model.intermediate_dim
    layers = model.num_layers
    check = _Checker()
    encoder_spec = transformer_spec.TransformerEncoderSpec(
        layers, heads, pre_norm=model.norm_first,
        activation=common_spec.Activation.RELU)
    decoder_spec = transformer_spec.TransformerDecoderSpec(
        layers, heads, pre_norm=model.norm_first,
        activation=common_spec.Activation.RELU)
    spec = transformer_spec.TransformerSpec(encoder_spec, decoder_spec)

    _embeddings(encoder_spec, check, "source", model.source_embedding,
                model.source_vocabulary_size, width, max_positions)
    target_table = _embeddings(decoder_spec, check, "target", model.target_embedding,
                               model.target_vocabulary_size, width, max_positions)
    for i, (layer_spec, block) in enumerate(zip(encoder_spec.layer, model.encoder.blocks)):
        what = f"encoder block {i}"
        _attention(layer_spec.self_attention, check, f"{what} self-attention",
                   block.self_attention, width, heads, self_attention=True)
        _layer_norm(layer_spec.self_attention.layer_norm, check,
                    f"{what} self-attention norm", block.self_attention_norm, width)
        _feed_forward(layer_spec.ffn, check, f"{what} feed-forward",
                      block.feed_forward, width, ff)
        _layer_norm(layer_spec.ffn.layer_norm, check, f"{what} feed-forward norm",
                    block.feed_forward_norm, width)
    for i, (layer_spec, block) in enumerate(zip(decoder_spec.layer, model.decoder.blocks)):
        what = f"decoder block {i}"
        if block.cross_attention is None:
            raise ValueError(f"{what} has no cross-attention.")
        _attention(layer_spec.self_attention, check, f"{what} self-attention",
                   block.self_attention, width, heads, self_attention=True)
        _layer_norm(layer_spec.self_attention.layer_norm, check,
                    f"{what} self-attention norm", block.self_attention_norm, width)
        _attention(layer_spec.attention, check, f"{what} cross-attention",
                   block.cross_attention, width, heads, self_attention=False)
        _layer_norm(layer_spec.attention.layer_norm, check,
                    f"{what} cross-attention norm", block.cross_attention_norm, width)
        _feed_forward(layer_spec.ffn, check, f"{what} feed-forward",
                      block.feed_forward, width, ff)
        _layer_norm(layer_spec.ffn.layer_norm, check, f"{what} feed-forward norm",
                    block.feed_forward_norm, width)
    if model.norm_first:
        _layer_norm(encoder_spec.layer_norm, check, "encoder final norm",
                    model.encoder.final_norm, width)
        _layer_norm(decoder_spec.layer_norm, check, "decoder final norm",
                    model.decoder.final_norm, width)
    if model.output_projection is None:
        # Tied: the (vocabulary, width) embedding table already is (out, in).
        decoder_spec.projection.weight = target_table
    else:
        _linear(decoder_spec.projection, check, "output projection",
                model.output_projection.kernel, model.output_projection.bias,
                width, model.target_vocabulary_size)

    spec.config.layer_norm_epsilon = float(epsilon)
    # Our encoder always sees the source followed by [END] (encode_source).
    spec.config.add_source_eos = True
    spec.register_source_vocabulary(source_tokens)
    spec.register_target_vocabulary(target_tokens)
    spec.validate()
    spec.optimize(quantization=quantization)
    os.makedirs(path, exist_ok=True)
    spec.save(path)
    return path


def ctranslate2_translate(directory, source_tokenizer, target_tokenizer, texts,
                          beam_size=1, length_penalty=1.0, max_length=256,
                          max_source_length=None, device="cpu",
                          compute_type="default", intra_threads=0,
                          translator=None, return_ids=False):
    """Translates texts with an exported CTranslate2 model, from and to our
    tokenizers' text.

    The source is tokenized as `encode_source` does (the model appends
    `</s>`); decoding stops at `</s>` or `<blank>` ([END] or [PAD], as
    `generate` does) and may stop at the first step. With `beam_size=1` the
    ids equal `model.generate`'s greedy ones (up to float rounding on
    near-ties).

    Args:
        directory: a directory written by `export_ctranslate2`.
        source_tokenizer, target_tokenizer: the model's tokenizers.
        texts: a list of `str`.
        beam_size: 1 for greedy search.
        length_penalty: CTranslate2's: the beam score is `log P / len **
            length_penalty` (not Wu et al.'s penalty of `generate`).
        max_length: target tokens generated at most ([END] included);
            no more than the exported position table.
        max_source_length: source word pieces kept, `</s>` included
            (default: all).
        device, compute_type, intra_threads: of `ctranslate2.Translator`.
        translator: an already loaded `ctranslate2.Translator` of
            `directory` (skips loading it again).
        return_ids: return `(batch, max_length)` int32 ids like
            `generate` (0-padded, [END] included) instead of strings.

    Returns:
        A list of `str` (or the ids).
    """
    ctranslate2, _, _ = _import_ctranslate2()
    if isinstance(texts, str):
        raise ValueError("`texts` must be a list of strings, not one string.")
    if not isinstance(beam_size, int) or beam_size <= 0:
        raise ValueError(f"`beam_size` must be a positive int; received {beam_size!r}.")
    if not isinstance(max_length, int) or max_length <= 0:
        raise ValueError(f"`max_length` must be a positive int; received {max_length!r}.")
    texts = list(texts)
    if translator is None:
        translator = ctranslate2.Translator(
            directory, device=device, compute_type=compute_type,
            intra_threads=intra_threads)
    source_vocabulary = ctranslate2_vocabulary(source_tokenizer)
    target_vocabulary = ctranslate2_vocabulary(target_tokenizer)
    target_ids = {t: i for i, t in enumerate(target_vocabulary)}
    sources = []
    if texts:
        ragged = source_tokenizer.tokenize(texts)
        for row in ragged.to_list():
            if max_source_length is not None:
                row = row[: max(max_source_length - 1, 0)]
            sources.append([source_vocabulary[i] for i in row])
    results = translator.translate_batch(
        sources, beam_size=beam_size, length_penalty=length_penalty,
        max_decoding_length=max_length, min_decoding_length=0,
        end_token=["</s>", "<blank>"], return_end_token=True,
        max_input_length=0)
    ids = np.zeros((len(texts), max_length), np.int32)
    for row, result in enumerate(results):
        tokens = [target_ids[t] for t in result.hypotheses[0]][:max_length]
        ids[row, : len(tokens)] = tokens
    # [PAD] is an end token: it reads as the padding after the sequence.
    if return_ids:
        return ids
    if not texts:
        return []
    return [t.decode("utf-8") for t in target_tokenizer.detokenize(ids).numpy()]


def ctranslate2_score(directory, source_ids, target_ids, translator=None,
                      compute_type="default", intra_threads=0):
    """Token log-probabilities of target ids given source ids, from an
    exported model (`ctranslate2.Translator.score_batch`).

    Args:
        directory: a directory written by `export_ctranslate2`.
        source_ids: `(batch, S)` source ids as the model reads them
            (0-padded, ending with [END]).
        target_ids: `(batch, T)` target ids after [START] (0-padded, ending
            with [END]).
        translator, compute_type, intra_threads: as in
            `ctranslate2_translate`.

    Returns:
        A list of float32 arrays, one per row: the log-probability of each
        non-padding target id.
    """
    ctranslate2, _, _ = _import_ctranslate2()
    if translator is None:
        translator = ctranslate2.Translator(
            directory, compute_type=compute_type, intra_threads=intra_threads)
    source_ids, target_ids = np.asarray(source_ids), np.asarray(target_ids)
    if source_ids.ndim != 2 or target_ids.ndim != 2 or len(source_ids) != len(target_ids):
        raise ValueError(
            "`source_ids` and `target_ids` must be (batch, length) with the same "
            f"batch; received shapes {source_ids.shape} and {target_ids.shape}."
        )
    sources, targets = [], []
    for source, target in zip(source_ids, target_ids):
        source = [int(i) for i in source if i != 0]
        target = [int(i) for i in target if i != 0]
        # The model appends </s> to the source and scores </s> after the
        # target itself.
        if source and source[-1] == 3:
            source = source[:-1]
        if not target or target[-1] != 3:
            raise ValueError("Every target row must end with [END] (id 3).")
        sources.append([f"{i}" for i in source])
        targets.append([f"{i}" for i in target[:-1]])
    # Ids as token strings of the exported vocabularies.
    vocab = _read_vocabularies(directory)
    sources = [[vocab["source"][int(t)] for t in row] for row in sources]
    targets = [[vocab["target"][int(t)] for t in row] for row in targets]
    results = translator.score_batch(sources, targets, max_input_length=0)
    return [np.asarray(r.log_probs, np.float32) for r in results]


def _read_vocabularies(directory):
    def read(name):
        for extension, reader in ((".json", lambda f: json.load(f)),
                                  (".txt", lambda f: f.read().split("\n")[:-1])):
            file = os.path.join(directory, name + extension)
            if os.path.exists(file):
                with open(file, encoding="utf-8") as f:
                    return reader(f)
        return None

    shared = read("shared_vocabulary")
    source = shared or read("source_vocabulary")
    target = shared or read("target_vocabulary")
    if source is None or target is None:
        raise ValueError(f"{directory!r} holds no CTranslate2 vocabulary files.")
    return {"source": source, "target": target}
