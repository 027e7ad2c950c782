"""The encoder-decoder Transformer of Vaswani et al. (2017)."""

import copy

import keras
from keras import ops

from keras_xformer.distribute import MultiWorkerFitMixin
from keras_xformer.layers import TokenAndPositionEmbedding
from keras_xformer.layers import TransformerDecoder
from keras_xformer.layers import TransformerEncoder
from keras_xformer.layers._lora import enable_lora as _enable_lora
from keras_xformer.layers._lora import restore_pending_lora
from keras_xformer.layers._masking import sequence_mask_from_ids
from keras_xformer.layers._quantization import dtype_policy_config

PAD_ID, UNK_ID, START_ID, END_ID = 0, 1, 2, 3

# Table 3 of the paper. Vocabulary defaults are the paper's shared 37000
# BPE tokens (WMT 2014 English-German) with shared, tied embeddings.
PRESETS = {
    "tiny": dict(num_layers=2, hidden_dim=128, num_heads=4,
                 intermediate_dim=512, dropout=0.1),
    # Between tiny and base, for corpora of tens to hundreds of thousands
    # of pairs trained in minutes on a CPU (benchmarks/real_text.py).
    "small": dict(num_layers=3, hidden_dim=256, num_heads=4,
                  intermediate_dim=1024, dropout=0.1),
    "medium": dict(num_layers=4, hidden_dim=384, num_heads=6,
                   intermediate_dim=1536, dropout=0.1),
    "base": dict(num_layers=6, hidden_dim=512, num_heads=8,
                 intermediate_dim=2048, dropout=0.1),
    "big": dict(num_layers=6, hidden_dim=1024, num_heads=16,
                intermediate_dim=4096, dropout=0.3),
}
_PRESET_VOCABULARY = dict(
    source_vocabulary_size=37000,
    target_vocabulary_size=37000,
    share_embeddings=True,
    tie_output_embeddings=True,
)


@keras.saving.register_keras_serializable(package="keras_xformer")
class Transformer(MultiWorkerFitMixin, keras.Model):
    """The sequence-to-sequence Transformer (Vaswani et al. 2017).

    `model((source_ids, target_input_ids))` returns next-token logits
    `(batch, target_length, target_vocabulary_size)` in float32 (also under
    mixed precision). Ids `[PAD]=0, [UNK]=1, [START]=2, [END]=3` are
    reserved; 0 is padding on both sides and is masked.

    Args:
        source_vocabulary_size: number of source token ids.
        target_vocabulary_size: number of target token ids.
        num_layers: `N`, blocks in the encoder and in the decoder.
        hidden_dim: `d_model`.
        num_heads: `h`; must divide `hidden_dim`.
        intermediate_dim: `d_ff`.
        dropout: `P_drop`, on embeddings and every sublayer output.
        max_length: longest sequence (needed for `positional="learned"`;
            the default `max_length` of `generate`).
        positional: `"sinusoidal"` or `"learned"`.
        share_embeddings: one embedding matrix for source and target (one
            vocabulary: the sizes must be equal).
        tie_output_embeddings: the pre-softmax projection is the transposed
            target embedding matrix (section 3.4).
        norm_first: pre-LN blocks (plus a final LayerNorm) instead of the
            paper's post-LN.
        start_token_id, end_token_id: the `[START]` and `[END]` ids.

    Example:

    >>> model = Transformer.from_preset("tiny", source_vocabulary_size=100,
    ...     target_vocabulary_size=120, share_embeddings=False)
    >>> source = keras.ops.array([[5, 6, 7, 3, 0]])
    >>> target = keras.ops.array([[2, 8, 9]])
    >>> model((source, target)).shape
    (1, 3, 120)

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762).
    """

    def __init__(
        self,
        source_vocabulary_size,
        target_vocabulary_size,
        num_layers=6,
        hidden_dim=512,
        num_heads=8,
        intermediate_dim=2048,
        dropout=0.1,
        max_length=None,
        positional="sinusoidal",
        share_embeddings=False,
        tie_output_embeddings=True,
        norm_first=False,
        start_token_id=START_ID,
        end_token_id=END_ID,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if share_embeddings and source_vocabulary_size != target_vocabulary_size:
            raise ValueError(
                "`share_embeddings=True` needs one vocabulary, but "
                f"source_vocabulary_size={source_vocabulary_size} and "
                f"target_vocabulary_size={target_vocabulary_size} differ. "
                "Use one shared vocabulary or `share_embeddings=False`."
            )
        if not isinstance(hidden_dim, int) or hidden_dim <= 0:
            raise ValueError(
                f"`hidden_dim` must be a positive int. Received: {hidden_dim}"
            )
        if not isinstance(num_heads, int) or num_heads <= 0 or hidden_dim % num_heads:
            raise ValueError(
                f"`num_heads` must be a positive divisor of hidden_dim="
                f"{hidden_dim}. Received: num_heads={num_heads}"
            )
        if positional == "learned" and max_length is None:
            raise ValueError('`positional="learned"` needs `max_length`.')
        self.source_vocabulary_size = source_vocabulary_size
        self.target_vocabulary_size = target_vocabulary_size
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.max_length = max_length
        self.positional = positional
        self.share_embeddings = share_embeddings
        self.tie_output_embeddings = tie_output_embeddings
        self.norm_first = norm_first
        self.start_token_id = start_token_id
        self.end_token_id = end_token_id

        def embedding(vocabulary_size, name):
            return TokenAndPositionEmbedding(
                vocabulary_size,
                hidden_dim,
                max_length=max_length,
                positional=positional,
                dropout=dropout,
                dtype=self.dtype_policy,
                name=name,
            )

        stack_args = dict(
            num_layers=num_layers,
            num_heads=num_heads,
            intermediate_dim=intermediate_dim,
            dropout=dropout,
            norm_first=norm_first,
            dtype=self.dtype_policy,
        )
        self.source_embedding = embedding(source_vocabulary_size, "source_embedding")
        self.target_embedding = (
            self.source_embedding
            if share_embeddings
            else embedding(target_vocabulary_size, "target_embedding")
        )
        self.encoder = TransformerEncoder(name="encoder", **stack_args)
        self.decoder = TransformerDecoder(name="decoder", **stack_args)
        self.output_projection = None
        if not tie_output_embeddings:
            self.output_projection = keras.layers.Dense(
                target_vocabulary_size, dtype=self.dtype_policy, name="output_projection"
            )

    @classmethod
    def from_preset(cls, preset, **overrides):
        """A model of a named size: `"tiny"`, or the paper's `"base"` and
        `"big"` (Table 3). `overrides` replace any constructor argument,
        e.g. the vocabulary sizes."""
        if preset not in PRESETS:
            raise ValueError(
                f"Unknown preset {preset!r}. Choose one of {sorted(PRESETS)}."
            )
        config = {**_PRESET_VOCABULARY, **PRESETS[preset], **overrides}
        if "share_embeddings" not in overrides:
            # The paper shares one vocabulary; two different ones cannot be.
            config["share_embeddings"] = (
                config["source_vocabulary_size"] == config["target_vocabulary_size"]
            )
        return cls(**config)

    # Building --------------------------------------------------------------

    def build(self, input_shape=None):
        source = (None, None)
        width = (None, None, self.hidden_dim)
        self.source_embedding.build(source)
        if not self.share_embeddings:
            self.target_embedding.build(source)
        self.encoder.build(width)
        self.decoder.build(width, width)
        if self.output_projection is not None:
            self.output_projection.build(width)
        self.built = True

    # The forward pass, in the paper's three parts ---------------------------

    def encode(self, source_ids, training=None):
        """`(encoder_outputs, source_padding_mask)` of `(batch, S)` ids."""
        source_ids = ops.convert_to_tensor(source_ids, "int32")
        source_mask = sequence_mask_from_ids(source_ids)
        x = self.source_embedding(source_ids, training=training)
        return self.encoder(x, padding_mask=source_mask, training=training), source_mask

    def logits(self, decoder_outputs):
        """Pre-softmax projection, tied to the target embedding by default."""
        if self.output_projection is not None:
            logits = self.output_projection(decoder_outputs)
        else:
            # `reverse` also reads a quantized or LoRA-adapted matrix.
            logits = self.target_embedding.reverse(decoder_outputs)
        # The softmax and loss run in float32 under mixed precision.
        return ops.cast(logits, "float32")

    def decode(self, target_ids, encoder_outputs, source_mask, training=None):
        """Logits of a full (teacher-forced) target prefix."""
        target_ids = ops.convert_to_tensor(target_ids, "int32")
        y = self.target_embedding(target_ids, training=training)
        y = self.decoder(
            y,
            encoder_outputs,
            decoder_padding_mask=sequence_mask_from_ids(target_ids),
            encoder_padding_mask=source_mask,
            training=training,
        )
        return self.logits(y)

    def decode_step(self, token_ids, index, self_caches, cross_caches, source_mask,
                    cache_rows=None):
        """One cached decoding step: logits `(batch, vocab)` of the token(s)
        at position `index`, and the updated self-attention caches (one
        per block, stacked or split `(keys, values)` pairs: see
        `MultiHeadAttention`'s `cache`; `generate` uses split ones).
        `cache_rows` `(batch, max_length)`: which cache row holds each row's
        keys/values at each position (beam search), `None` for row `b`."""
        y = self.target_embedding(token_ids, start_index=index)
        y, self_caches, _ = self.decoder(
            y,
            decoder_padding_mask=None,
            encoder_padding_mask=source_mask,
            self_attention_caches=self_caches,
            cross_attention_caches=cross_caches,
            cache_update_index=index,
            self_attention_cache_rows=cache_rows,
        )
        logits = self.logits(y)
        if logits.shape[1] == 1:
            # A reshape, not `[:, -1]`: TFLite runs that slice with its
            # reference STRIDED_SLICE kernel, an element at a time over
            # (rows, vocabulary): 15% of a dynamic-int8 beam b8 step under
            # `perf` (benchmarks/RESULTS.md, session 15).
            return ops.reshape(logits, (-1, logits.shape[-1])), self_caches
        return logits[:, -1], self_caches

    def cross_attention_weights(self, source_ids, target_ids):
        """Cross-attention weights of every decoder block, a list of
        `(batch, heads, target_length, source_length)` tensors (for plots)."""
        encoder_outputs, source_mask = self.encode(source_ids)
        target_ids = ops.convert_to_tensor(target_ids, "int32")
        target_mask = sequence_mask_from_ids(target_ids)
        y = self.target_embedding(target_ids)
        weights = []
        for block in self.decoder.blocks:
            y, scores = block(
                y,
                encoder_outputs,
                decoder_padding_mask=target_mask,
                encoder_padding_mask=source_mask,
                return_attention_scores=True,
            )
            weights.append(scores["cross_attention"])
        return weights

    def call(self, inputs, training=None):
        if isinstance(inputs, dict):
            source_ids, target_ids = inputs["source_ids"], inputs["target_ids"]
        else:
            if len(inputs) != 2:
                raise ValueError(
                    "A Transformer is called on `(source_ids, target_ids)`. "
                    f"Received {len(inputs)} inputs."
                )
            source_ids, target_ids = inputs
        encoder_outputs, source_mask = self.encode(source_ids, training=training)
        return self.decode(target_ids, encoder_outputs, source_mask, training=training)

    def compute_output_shape(self, input_shape):
        target_shape = input_shape[1] if not isinstance(input_shape, dict) else input_shape["target_ids"]
        return tuple(target_shape[:2]) + (self.target_vocabulary_size,)

    # Generation -------------------------------------------------------------

    def generate(
        self,
        source_ids,
        max_length=None,
        method="greedy",
        beam_size=4,
        length_penalty=0.6,
        jit_compile="auto",
    ):
        """Translates `(batch, S)` source ids into target ids.

        Encodes the source once, keeps the cross-attention keys/values of
        every decoder block, and decodes with a static-shape self-attention
        cache, so each step costs O(T). The whole loop is one compiled
        function, traced once per (batch, source length, max_length).

        Args:
            source_ids: `(batch, S)` int ids, 0-padded.
            max_length: number of target tokens to produce; default the
                model's `max_length`, else twice the source length.
            method: `"greedy"` or `"beam"`.
            beam_size: beams for `"beam"`.
            length_penalty: `alpha` of Wu et al. (2016):
                `score = log P / ((5 + length) / 6) ** alpha`.
            jit_compile: `"auto"` (XLA where the benchmarks show it faster:
                on GPU/TPU, and for decoding on this project's CPU too),
                `True` or `False`.

        Returns:
            `(batch, max_length)` int32 numpy array: the tokens after
            `[START]`, `[END]` included, then 0s.
        """
        from keras_xformer.decoding import generate

        return generate(
            self,
            source_ids,
            max_length=max_length,
            method=method,
            beam_size=beam_size,
            length_penalty=length_penalty,
            jit_compile=jit_compile,
        )

    # Quantization and LoRA ---------------------------------------------------

    def enable_lora(self, rank, lora_alpha=None, target_layer_names=None):
        """Parameter-efficient fine-tuning (LoRA, Hu et al. 2021): freezes
        every weight and adds rank-`rank` adapters `W + (alpha / r) A B` to
        the attention projections, the feed-forward matrices and the token
        embeddings (as keras-hub's `Backbone.enable_lora`, with more
        targets by default). Saved with `model.save`, the kernels hold the
        merged weights and the reloaded model gets fresh adapters, frozen
        the same way.

        Args:
            rank: the adapters' rank `r`.
            lora_alpha: scale numerator; default `rank`.
            target_layer_names: sublayer names to adapt; default `query`,
                `key`, `value`, `attention_output`, `inner`, `output`,
                `token_embedding`, `output_projection`.

        Returns:
            The sublayers that got adapters.

        Example:

        >>> model = Transformer.from_preset("tiny", source_vocabulary_size=50,
        ...     target_vocabulary_size=50)
        >>> model.build()
        >>> _ = model.enable_lora(4)
        >>> trainable = sum(int(v.numpy().size) for v in model.trainable_variables)
        >>> trainable < model.count_params() // 10
        True
        """
        if not self.built:
            self.build()
        chosen = _enable_lora(self, rank, lora_alpha, target_layer_names)
        self._forget_compiled_functions()
        return chosen

    def _post_quantize(self, mode, **kwargs):
        super()._post_quantize(mode, **kwargs)
        self._forget_compiled_functions()

    def _forget_compiled_functions(self):
        # `generate` keeps one traced function per model; traced before
        # `quantize` or `enable_lora`, it would run the old weights.
        from keras_xformer.decoding import search

        getattr(search, "_COMPILED", {}).pop(self, None)
        self.train_function = self.test_function = self.predict_function = None

    def load_own_variables(self, store):
        # Adapters recorded in the config come back before the sublayers
        # read their (merged) kernels.
        if not self.built:
            self.build()
        restore_pending_lora(self)
        super().load_own_variables(store)

    # Config -----------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "source_vocabulary_size": self.source_vocabulary_size,
                "target_vocabulary_size": self.target_vocabulary_size,
                "num_layers": self.num_layers,
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "max_length": self.max_length,
                "positional": self.positional,
                "share_embeddings": self.share_embeddings,
                "tie_output_embeddings": self.tie_output_embeddings,
                "norm_first": self.norm_first,
                "start_token_id": self.start_token_id,
                "end_token_id": self.end_token_id,
            }
        )
        # Quantized sublayers come back quantized (a dtype policy map).
        config["dtype"] = dtype_policy_config(self)
        config.update(getattr(self, "_lora_config", None) or {})
        return config

    @classmethod
    def from_config(cls, config):
        config = copy.deepcopy(config)
        lora = {k: config.pop(k) for k in ("lora_rank", "lora_alpha",
                                           "lora_target_layer_names") if k in config}
        model = cls(**config)
        if lora:
            model._pending_lora = lora
        return model
