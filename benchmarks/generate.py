"""Milliseconds per generated token: our cached greedy `generate` against
(a) a naive loop that re-runs the full model on the (padded) prefix every
step and (b) keras-hub's `TransformerDecoder` with self/cross-attention
caches driven by `keras_hub.samplers.GreedySampler`, as its BART does.

Same sizes for all three (random weights): width 256, 8 heads, feed-forward
1024, 4 encoder + 4 decoder layers, vocabulary 8000, source length 64,
64 new tokens; [END] and [PAD] get a -1e4 output bias so every run makes
all 64 tokens.

    python benchmarks/generate.py [--batches 1 8] [--repeats 3]
"""

import argparse

import _common
import keras
import keras_hub
import numpy as np
import tensorflow as tf

from keras_xformer.models import Transformer

VOCAB, WIDTH, HEADS, FF, LAYERS, SOURCE, NEW = 8000, 256, 8, 1024, 4, 64, 64


def our_model():
    keras.utils.set_random_seed(0)
    model = Transformer(VOCAB, VOCAB, num_layers=LAYERS, hidden_dim=WIDTH,
                        num_heads=HEADS, intermediate_dim=FF, dropout=0.0,
                        tie_output_embeddings=False)
    model.build()
    bias = model.output_projection.bias.numpy()
    bias[[0, 3]] = -1e4
    model.output_projection.bias.assign(bias)
    return model


def naive_generate(model, jit_compile):
    """The tutorial's loop: a full forward pass on the padded prefix per token."""

    @tf.function(jit_compile=jit_compile)
    def step(source, prefix, index):
        logits = model((source, prefix), training=False)
        return tf.cast(tf.argmax(logits[:, index], -1), tf.int32)

    def run(source):
        prefix = np.zeros((len(source), NEW), "int32")
        prefix[:, 0] = model.start_token_id
        out = np.zeros((len(source), NEW), "int32")
        for i in range(NEW):
            out[:, i] = step(source, prefix, tf.constant(i)).numpy()
            if i + 1 < NEW:
                prefix[:, i + 1] = out[:, i]
        return out

    return run


class HubSeq2Seq:
    """keras-hub layers wired as its BART: cached decoder + GreedySampler."""

    def __init__(self):
        keras.utils.set_random_seed(0)
        self.source_embedding = keras_hub.layers.TokenAndPositionEmbedding(VOCAB, 256, WIDTH)
        self.target_embedding = keras_hub.layers.TokenAndPositionEmbedding(VOCAB, 256, WIDTH)
        self.encoders = [keras_hub.layers.TransformerEncoder(FF, HEADS, dropout=0.0)
                         for _ in range(LAYERS)]
        self.decoders = [keras_hub.layers.TransformerDecoder(FF, HEADS, dropout=0.0)
                         for _ in range(LAYERS)]
        self.output_dense = keras.layers.Dense(VOCAB)
        self.sampler = keras_hub.samplers.GreedySampler()
        source = np.ones((1, SOURCE), "int32")
        x = self.source_embedding(source)
        for layer in self.encoders:
            x = layer(x)
        y = self.target_embedding(source[:, :2])
        for layer in self.decoders:
            y = layer(y, x)
        self.output_dense(y)
        self.layers = ([self.source_embedding, self.target_embedding, self.output_dense]
                       + self.encoders + self.decoders)

    def count_params(self):
        return sum(layer.count_params() for layer in self.layers)

    def generate_fn(self, jit_compile):
        head_dim = WIDTH // HEADS

        @tf.function(jit_compile=jit_compile)
        def generate(source):
            batch = tf.shape(source)[0]
            source_mask = source != 0
            x = self.source_embedding(source)
            for layer in self.encoders:
                x = layer(x, padding_mask=source_mask)
            # Fill each block's cross-attention cache once (BART's _build_cache).
            cross = []
            first = self.target_embedding(tf.fill((batch, 1), 2))
            for layer in self.decoders:
                _, _, c = layer(
                    first, x, encoder_padding_mask=source_mask,
                    self_attention_cache=tf.zeros((batch, 2, NEW + 1, HEADS, head_dim)),
                    self_attention_cache_update_index=0,
                    cross_attention_cache=tf.zeros((batch, 2, SOURCE, HEADS, head_dim)),
                    cross_attention_cache_update_index=0,
                )
                cross.append(c)
            self_caches = tuple(tf.zeros((batch, 2, NEW + 1, HEADS, head_dim))
                                for _ in range(LAYERS))

            def next(prompt, cache, index):
                y = self.target_embedding(prompt[:, index - 1 : index], start_index=index - 1)
                new = []
                for layer, self_cache, cross_cache in zip(self.decoders, cache, cross):
                    y, self_cache, _ = layer(
                        y, x, encoder_padding_mask=source_mask,
                        self_attention_cache=self_cache,
                        self_attention_cache_update_index=index - 1,
                        cross_attention_cache=cross_cache,
                        cross_attention_cache_update_index=None,
                    )
                    new.append(self_cache)
                logits = self.output_dense(y)[:, 0]
                logits = logits + tf.where(tf.range(VOCAB)[None] == 3, -1e4, 0.0)
                return logits, None, tuple(new)

            prompt = tf.concat([tf.fill((batch, 1), 2), tf.zeros((batch, NEW), tf.int32)], 1)
            mask = tf.concat([tf.ones((batch, 1), bool), tf.zeros((batch, NEW), bool)], 1)
            return self.sampler(next, prompt, cache=self_caches, index=1, mask=mask)

        return lambda source: generate(source).numpy()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    ours = our_model()
    hub = HubSeq2Seq()
    print(f"Parameters: ours {ours.count_params():,}, keras-hub {hub.count_params():,} "
          "(keras-hub's learned position tables account for the difference)")
    rows, results = [], {}
    for batch in args.batches:
        source = np.random.default_rng(batch).integers(4, VOCAB, (batch, SOURCE)).astype("int32")
        timings = {}
        for jit in (False, True):
            out = ours.generate(source, max_length=NEW, jit_compile=jit)
            assert (out != 0).all(), "the benchmark must make all 64 tokens"
            timings[f"ours jit={jit}"] = _common.time_call(
                lambda: ours.generate(source, max_length=NEW, jit_compile=jit),
                warmup=1, repeats=args.repeats)
            generate = hub.generate_fn(jit)
            timings[f"keras-hub jit={jit}"] = _common.time_call(
                lambda: generate(source), warmup=1, repeats=args.repeats)
            naive = naive_generate(ours, jit)
            timings[f"naive jit={jit}"] = _common.time_call(
                lambda: naive(source), warmup=1, repeats=max(1, args.repeats - 1))
        per_token = {k: 1e3 * v / NEW for k, v in timings.items()}
        best = {name: min(v for k, v in per_token.items() if k.startswith(name))
                for name in ("ours", "keras-hub", "naive")}
        for name, ms in sorted(per_token.items()):
            rows.append((batch, name, f"{ms:.2f}"))
        rows.append((batch, "best vs best", f"naive/ours {best['naive'] / best['ours']:.1f}x, "
                                            f"keras-hub/ours {best['keras-hub'] / best['ours']:.1f}x"))
        results[f"batch={batch}"] = {"ms_per_token": per_token, "best": best,
                                     "speedup_vs_naive": best["naive"] / best["ours"],
                                     "speedup_vs_keras_hub": best["keras-hub"] / best["ours"]}
    _common.print_table(
        f"Greedy generation, source {SOURCE}, {NEW} new tokens, width {WIDTH}, "
        f"{LAYERS}+{LAYERS} layers (ms per generated token)",
        ("batch", "implementation", "ms/token"), rows)
    _common.save_results("generate", results)


if __name__ == "__main__":
    main()
