"""Training speed of the same encoder-decoder built three ways, in `model.fit`.

    python benchmarks/train.py                # everything (about 20 minutes here)
    python benchmarks/train.py --quick        # fewer timed steps
    python benchmarks/train.py --only ours    # one model (ours, keras_hub, tutorial)

The configuration (issue 5): width 256, 8 heads, feed-forward 1024, 4 encoder + 4
decoder layers, vocabulary 8000 (source and target), source and target length 64,
batch 64, dropout 0.1, every token real (no padding). The three models:

- ours: `keras_xformer.models.Transformer` (learned positions, untied output
  projection, so that the parameter count equals the others');
- keras_hub: `TokenAndPositionEmbedding`, `TransformerEncoder`,
  `TransformerDecoder` and a `Dense` output layer;
- tutorial: the TensorFlow "Neural machine translation with a Transformer and
  Keras" tutorial's classes (`keras.layers.MultiHeadAttention`, `Add`,
  `LayerNormalization`), with learned positions and `key_dim = width / heads`
  so that it has the same parameters as the other two.

All three are trained with the same loss, the paper's label-smoothed (0.1)
cross-entropy over non-padding tokens (`MaskedSparseCategoricalCrossentropy`),
and Adam. The figure is target tokens per second in `model.fit`: batch x
target length / the median step time after warm-up (first step, tracing and
XLA compilation excluded).

Model FLOPs per training step (a multiply-add counts 2; training = 3 x the
forward pass, the backward pass costing twice the forward one; embeddings,
softmax, LayerNorm and elementwise work not counted; attention over the full
T x T square, as computed):

    forward = B * S * L_enc * (8 d^2 + 4 S d + 4 d f)                   encoder
            + B * T * L_dec * (8 d^2 + 4 T d                             self-attention
                               + 4 d^2 + 4 S d                           cross Q, out, QK, AV
                               + 4 d f)                                  feed-forward
            + B * S * L_dec * 4 d^2                                      cross K, V
            + B * T * 2 d V                                              output layer
    train   = 3 * forward

MFU = train FLOPs per step / step time / the float32 matmul ceiling, measured
in the same run as the best of large square `tf.matmul`s (with and without
XLA).

Each measurement runs in its own process (XLA flags are read once per
process), one after another.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import _common

CONFIG = dict(
    hidden_dim=256, num_heads=8, intermediate_dim=1024, num_layers=4,
    vocabulary_size=8000, length=64, batch=64, dropout=0.1,
)


# The main job's own shapes (examples/translate_numbers.py, default run): the
# tiny preset, about 2,400 word pieces per side, source 15 and target 20 tokens.
MAIN_JOB = dict(preset="tiny", vocabulary_size=2400, source_length=15, length=20,
                batch=64, dropout=0.1)


def train_flops(c):
    """Model FLOPs of one training step (the formula in the docstring)."""
    b, s, t = c["batch"], c["length"], c["length"]
    d, f, v, n = c["hidden_dim"], c["intermediate_dim"], c["vocabulary_size"], c["num_layers"]
    encoder = b * s * n * (8 * d * d + 4 * s * d + 4 * d * f)
    decoder = b * t * n * (8 * d * d + 4 * t * d + 4 * d * d + 4 * s * d + 4 * d * f)
    cross_key_value = b * s * n * 4 * d * d
    output = b * t * 2 * d * v
    return 3 * (encoder + decoder + cross_key_value + output)


# --- the three models --------------------------------------------------------


def build_ours(c, **overrides):
    from keras_xformer.models import Transformer

    return Transformer(
        c["vocabulary_size"], c["vocabulary_size"], num_layers=c["num_layers"],
        hidden_dim=c["hidden_dim"], num_heads=c["num_heads"],
        intermediate_dim=c["intermediate_dim"], dropout=c["dropout"],
        max_length=c["length"], positional="learned", share_embeddings=False,
        tie_output_embeddings=False, **overrides,
    )


def build_keras_hub(c):
    import keras
    import keras_hub

    source = keras.Input((c["length"],), dtype="int32")
    target = keras.Input((c["length"],), dtype="int32")

    def embed(ids):
        return keras_hub.layers.TokenAndPositionEmbedding(
            c["vocabulary_size"], c["length"], c["hidden_dim"], mask_zero=True)(ids)

    x = embed(source)
    for _ in range(c["num_layers"]):
        x = keras_hub.layers.TransformerEncoder(
            c["intermediate_dim"], c["num_heads"], dropout=c["dropout"])(x)
    y = embed(target)
    for _ in range(c["num_layers"]):
        y = keras_hub.layers.TransformerDecoder(
            c["intermediate_dim"], c["num_heads"], dropout=c["dropout"])(y, x)
    return keras.Model([source, target], keras.layers.Dense(c["vocabulary_size"])(y))


def build_tutorial(c):
    """The TensorFlow Transformer tutorial's model, written for Keras 3."""
    import keras
    from keras import layers

    d, h, rate = c["hidden_dim"], c["num_heads"], c["dropout"]

    class PositionalEmbedding(layers.Layer):
        def __init__(self):
            super().__init__()
            self.embedding = layers.Embedding(c["vocabulary_size"], d, mask_zero=True)
            self.position = layers.Embedding(c["length"], d)

        def compute_mask(self, x, mask=None):
            return self.embedding.compute_mask(x, mask)

        def call(self, x):
            positions = keras.ops.arange(keras.ops.shape(x)[1])
            x = self.embedding(x) * keras.ops.sqrt(keras.ops.cast(d, "float32"))
            return x + self.position(positions)[None]

    class BaseAttention(layers.Layer):
        def __init__(self):
            super().__init__()
            self.mha = layers.MultiHeadAttention(num_heads=h, key_dim=d // h, dropout=rate)
            self.layernorm = layers.LayerNormalization()
            self.add = layers.Add()

    class CrossAttention(BaseAttention):
        def call(self, x, context):
            return self.layernorm(self.add([x, self.mha(query=x, key=context, value=context)]))

    class GlobalSelfAttention(BaseAttention):
        def call(self, x):
            return self.layernorm(self.add([x, self.mha(query=x, value=x, key=x)]))

    class CausalSelfAttention(BaseAttention):
        def call(self, x):
            attended = self.mha(query=x, value=x, key=x, use_causal_mask=True)
            return self.layernorm(self.add([x, attended]))

    class FeedForward(layers.Layer):
        def __init__(self):
            super().__init__()
            self.seq = keras.Sequential([
                layers.Dense(c["intermediate_dim"], activation="relu"),
                layers.Dense(d),
                layers.Dropout(rate),
            ])
            self.add = layers.Add()
            self.layer_norm = layers.LayerNormalization()

        def call(self, x):
            return self.layer_norm(self.add([x, self.seq(x)]))

    class EncoderLayer(layers.Layer):
        def __init__(self):
            super().__init__()
            self.self_attention = GlobalSelfAttention()
            self.ffn = FeedForward()

        def call(self, x):
            return self.ffn(self.self_attention(x))

    class DecoderLayer(layers.Layer):
        def __init__(self):
            super().__init__()
            self.causal_self_attention = CausalSelfAttention()
            self.cross_attention = CrossAttention()
            self.ffn = FeedForward()

        def call(self, x, context):
            x = self.causal_self_attention(x)
            return self.ffn(self.cross_attention(x, context))

    class Encoder(layers.Layer):
        def __init__(self):
            super().__init__()
            self.pos_embedding = PositionalEmbedding()
            self.enc_layers = [EncoderLayer() for _ in range(c["num_layers"])]
            self.dropout = layers.Dropout(rate)

        def call(self, x):
            x = self.dropout(self.pos_embedding(x))
            for layer in self.enc_layers:
                x = layer(x)
            return x

    class Decoder(layers.Layer):
        def __init__(self):
            super().__init__()
            self.pos_embedding = PositionalEmbedding()
            self.dropout = layers.Dropout(rate)
            self.dec_layers = [DecoderLayer() for _ in range(c["num_layers"])]

        def call(self, x, context):
            x = self.dropout(self.pos_embedding(x))
            for layer in self.dec_layers:
                x = layer(x, context)
            return x

    class TutorialTransformer(keras.Model):
        def __init__(self):
            super().__init__()
            self.encoder = Encoder()
            self.decoder = Decoder()
            self.final_layer = layers.Dense(c["vocabulary_size"])

        def call(self, inputs):
            context, x = inputs
            return self.final_layer(self.decoder(x, self.encoder(context)))

    return TutorialTransformer()


BUILDERS = {"ours": build_ours, "keras_hub": build_keras_hub, "tutorial": build_tutorial}

# Each lever turns one of our optimisations off (see `apply_lever`).
LEVERS = ("unfused_qkv", "unfused_cross_kv", "one_hot_loss", "autodiff_loss", "keras_dropout")
# XLA:CPU flags worth knowing about (each measured alone, ours with XLA).
XLA_FLAG_VARIANTS = ("--xla_cpu_use_xnnpack=false", "--xla_cpu_use_fusion_emitters=false")


# --- one measurement (a child process) --------------------------------------


def one_hot_loss(vocabulary_size, label_smoothing):
    """Keras' label-smoothed categorical cross-entropy on one-hot targets,
    masked to the non-padding tokens (what Keras offers for label
    smoothing; the lever compared with ours)."""
    import keras
    from keras import ops

    cross_entropy = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=label_smoothing, reduction=None)

    def loss(y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        mask = ops.cast(ops.not_equal(y_true, 0), "float32")
        losses = cross_entropy(ops.one_hot(y_true, vocabulary_size), y_pred)
        return ops.sum(losses * mask) / ops.maximum(ops.sum(mask), 1.0)

    return loss


def measure(model_name, jit_compile, precision, lever, steps, warmup, config="issue5"):
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_xformer.models import Transformer

    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(precision)
    if config == "main_job":
        c = dict(MAIN_JOB)
        model = Transformer.from_preset(
            "tiny", source_vocabulary_size=c["vocabulary_size"],
            target_vocabulary_size=c["vocabulary_size"], dropout=c["dropout"])
    else:
        c = dict(CONFIG)
        model = BUILDERS[model_name](c)
    rng = np.random.default_rng(0)
    b, t, v = c["batch"], c["length"], c["vocabulary_size"]
    n = 8 * b
    source = rng.integers(4, v, (n, c.get("source_length", t))).astype("int32")
    target = rng.integers(4, v, (n, t + 1)).astype("int32")
    data = tf.data.Dataset.from_tensor_slices(
        ((source, target[:, :-1]), target[:, 1:])).batch(b, drop_remainder=True)
    data = data.cache().repeat().prefetch(2)
    model((source[:2], target[:2, :-1]))  # build
    if model_name == "ours":
        apply_lever(model, lever)
    loss = loss_for(lever, v)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4, beta_1=0.9, beta_2=0.98, epsilon=1e-9),
        loss=loss, jit_compile=jit_compile)

    ends = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ends.append(time.perf_counter())

    start = time.perf_counter()
    history = model.fit(data, epochs=1, steps_per_epoch=warmup + steps, verbose=0,
                        callbacks=[Clock()])
    first_step = ends[0] - start
    step = statistics.median(np.diff(ends[warmup - 1:]))
    return {
        "model": model_name, "config": config, "jit_compile": jit_compile,
        "precision": precision,
        "lever": lever, "parameters": int(model.count_params()),
        "step_seconds": step, "first_step_seconds": first_step,
        "tokens_per_second": b * t / step,
        "loss": float(history.history["loss"][-1]),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def autodiff_loss(label_smoothing):
    """Our loss as it was before its gradient was written by hand: the same
    formula, differentiated automatically."""
    from keras import ops

    def loss(y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        y_pred = ops.cast(y_pred, "float32")
        true_logit = ops.squeeze(
            ops.take_along_axis(y_pred, ops.expand_dims(y_true, -1), axis=-1), -1)
        losses = (ops.logsumexp(y_pred, axis=-1) - (1 - label_smoothing) * true_logit
                  - label_smoothing * ops.mean(y_pred, axis=-1))
        mask = ops.cast(ops.not_equal(y_true, 0), "float32")
        return ops.sum(losses * mask) / ops.maximum(ops.sum(mask), 1.0)

    return loss


def loss_for(lever, vocabulary_size):
    """Our loss, or the loss a loss lever compares it with."""
    from keras_xformer.losses import MaskedSparseCategoricalCrossentropy

    if lever == "one_hot_loss":
        return one_hot_loss(vocabulary_size, 0.1)
    if lever == "autodiff_loss":
        return autodiff_loss(0.1)
    return MaskedSparseCategoricalCrossentropy(label_smoothing=0.1)


def train_in_turns(variants, jit_compile, steps, warmup):
    """Median step seconds of each `(name, build, lever)` variant, trained
    one step each in turn in this process (`train_on_batch`, the step `fit`
    compiles), so that the CPU's drift hits all of them alike."""
    import keras
    import numpy as np

    c = dict(CONFIG)
    rng = np.random.default_rng(0)
    b, t, v = c["batch"], c["length"], c["vocabulary_size"]
    x = (rng.integers(4, v, (b, t)).astype("int32"), rng.integers(4, v, (b, t)).astype("int32"))
    y = rng.integers(4, v, (b, t)).astype("int32")
    models = {}
    for name, build, lever in variants:
        keras.utils.set_random_seed(0)
        model = build(c)
        model(x)
        apply_lever(model, lever)
        model.compile(optimizer=keras.optimizers.Adam(1e-4, beta_1=0.9, beta_2=0.98,
                                                      epsilon=1e-9),
                      loss=loss_for(lever, v), jit_compile=jit_compile)
        for _ in range(warmup):
            model.train_on_batch(x, y)
        models[name] = model
    times = {name: [] for name in models}
    for _ in range(steps):
        for name, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(x, y)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure_head_to_head(jit_compile, steps, warmup):
    """The three models in turns: the ratios between models come from here."""
    variants = [(name, build, None) for name, build in BUILDERS.items()]
    return {"jit_compile": jit_compile,
            "step_seconds": train_in_turns(variants, jit_compile, steps, warmup)}


def measure_lever(lever, jit_compile, steps, warmup):
    """The shipped model and the same model with `lever` turned off, in turns."""
    seconds = train_in_turns(
        [("shipped", build_ours, None), (lever, build_ours, lever)], jit_compile, steps, warmup)
    shipped, off = seconds["shipped"], seconds[lever]
    return {"lever": lever, "jit_compile": jit_compile, "shipped_seconds": shipped,
            "lever_off_seconds": off, "speedup": off / shipped}


def apply_lever(model, lever):
    """Turns one of our optimisations off (for the lever table)."""
    if lever in (None, "one_hot_loss", "autodiff_loss"):
        return
    blocks = model.encoder.blocks + model.decoder.blocks
    if lever == "keras_dropout":
        import types

        import keras

        from keras_xformer.layers._dropout import Dropout

        for layer in model._flatten_layers():
            if isinstance(layer, Dropout):
                layer.call = types.MethodType(keras.layers.Dropout.call, layer)
    elif lever == "unfused_qkv":
        for block in blocks:
            block.self_attention._fusable = False
    elif lever == "unfused_cross_kv":
        for block in model.decoder.blocks:
            block.cross_attention._fusable = False
    else:
        raise ValueError(f"Unknown lever {lever!r}")


def matmul_ceiling():
    """Best float32 GFLOP/s of square `tf.matmul`s, with and without XLA."""
    import tensorflow as tf

    best = {}
    for jit in (False, True):
        for n in (1024, 2048, 3072):
            a = tf.random.normal((n, n))
            b = tf.random.normal((n, n))
            f = tf.function(lambda a, b: tf.matmul(a, b), jit_compile=jit)
            seconds = _common.time_call(lambda: f(a, b).numpy(), warmup=2, repeats=7)
            best[f"n={n} xla={jit}"] = 2 * n ** 3 / seconds / 1e9
    return best


# --- the parent -------------------------------------------------------------


def child(args):
    if args.ceiling:
        result = {"ceiling": matmul_ceiling()}
    elif args.head_to_head:
        result = measure_head_to_head(args.jit == "true", args.steps, args.warmup)
    elif args.paired:
        result = measure_lever(args.lever, args.jit == "true", args.steps, args.warmup)
    else:
        result = measure(args.model, args.jit == "true", args.precision,
                         args.lever or None, args.steps, args.warmup, args.config)
    print("RESULT " + json.dumps(result), flush=True)


def run_child(extra, xla_flags=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    out = subprocess.run([sys.executable, __file__, "--child", *extra], env=env,
                         capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"benchmark child {extra} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ceiling", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--paired", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--head-to-head", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="ours")
    parser.add_argument("--jit", default="false")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--lever", default="")
    parser.add_argument("--config", default="issue5", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--no-levers", action="store_true")
    parser.add_argument("--levers-only", action="store_true",
                        help="re-measure the head-to-head and the levers only, "
                             "into the last results")
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.steps, args.warmup = 4, 2
    timing = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    flops = train_flops(CONFIG)
    plan = []  # (model, jit, precision, lever, XLA flags, config)
    for name in args.only or list(BUILDERS):
        for jit in ("false", "true"):
            plan.append((name, jit, "float32", "", None, "issue5"))
        if name == "ours":
            plan.append((name, "false", "mixed_bfloat16", "", None, "issue5"))
            plan.append((name, "true", "mixed_bfloat16", "", None, "issue5"))
            if not args.no_levers:
                for flags in XLA_FLAG_VARIANTS:
                    plan.append((name, "true", "float32", "", flags, "issue5"))
            # What the main job should train with, on its own shapes.
            for jit in ("false", "true"):
                plan.append((name, jit, "float32", "", None, "main_job"))
    if args.levers_only:  # keep the last full run's models, replace its levers
        payload = json.load(open(os.path.join(_common.RESULTS_DIR, "train.json")))
        payload["head_to_head"] = run_head_to_head(timing)
        payload["levers"] = run_levers(timing)
        report(payload)
        _common.save_results("train", payload)
        return
    ceiling = run_child(["--ceiling"])["ceiling"]
    runs = []
    for name, jit, precision, lever, flags, config in plan:
        extra = ["--model", name, "--jit", jit, "--precision", precision,
                 "--lever", lever, "--config", config, *timing]
        r = run_child(extra, flags)
        runs.append(r)
        print(f"{name:10s} {config:8s} jit={jit:5s} {precision:15s} "
              f"{lever or flags or '-':17s} {r['parameters']:,} params  "
              f"{r['step_seconds']*1000:7.0f} ms/step  "
              f"{r['tokens_per_second']:7,.0f} tokens/s  (first step "
              f"{r['first_step_seconds']:.0f} s, loss {r['loss']:.2f})", flush=True)
    # The CPU's speed drifts: the ceiling is the best of two measurements,
    # one before and one after the models.
    for key, value in run_child(["--ceiling"])["ceiling"].items():
        ceiling[key] = max(ceiling[key], value)
    ceiling_gflops = max(ceiling.values())
    for r in runs:
        if r["config"] == "issue5":
            r["gflops"] = flops / r["step_seconds"] / 1e9
            r["mfu"] = r["gflops"] / ceiling_gflops
    head_to_head = run_head_to_head(timing)
    levers = [] if args.no_levers else run_levers(timing)
    payload = {"config": CONFIG, "train_flops_per_step": flops, "ceiling": ceiling,
               "ceiling_gflops": ceiling_gflops, "runs": runs,
               "head_to_head": head_to_head, "levers": levers}
    report(payload)
    _common.save_results("train", payload)


def run_head_to_head(timing):
    """The three models in turns in one process, with and without XLA."""
    results = []
    for jit in ("false", "true"):
        r = run_child(["--head-to-head", "--jit", jit, *timing])
        results.append(r)
        print(f"head to head, XLA {jit}: " + ", ".join(
            f"{n} {1000 * s:.0f} ms/step" for n, s in r["step_seconds"].items()), flush=True)
    return results


def run_levers(timing):
    """Each lever against the shipped model in one process, in turns, with
    XLA (the GPU/TPU graphs)."""
    levers = []
    for lever in LEVERS:
        r = run_child(["--paired", "--lever", lever, "--jit", "true", *timing])
        levers.append(r)
        print(f"lever {lever:17s} XLA: shipped {r['shipped_seconds'] * 1000:.0f} ms/step, "
              f"turned off {r['lever_off_seconds'] * 1000:.0f} ms/step "
              f"({r['speedup']:.2f}x)", flush=True)
    return levers


def best(runs, model, **where):
    rows = [r for r in runs if r["model"] == model and not r["lever"] and not r["xla_flags"]
            and all(r[k] == v for k, v in where.items())]
    return max(rows, key=lambda r: r["tokens_per_second"]) if rows else None


def report(p):
    runs = p["runs"]
    print(f"\nfloat32 matmul ceiling: {p['ceiling_gflops']:.0f} GFLOP/s "
          f"({', '.join(f'{k}: {v:.0f}' for k, v in p['ceiling'].items())})")
    print(f"training FLOPs per step: {p['train_flops_per_step'] / 1e9:.1f} GFLOP")
    main_job = [r for r in runs if r.get("config") == "main_job"]
    runs = [r for r in runs if r.get("config", "issue5") == "issue5"]
    rows = []
    for r in runs:
        rows.append([r["model"], str(r["jit_compile"]), r["precision"],
                     r["lever"] or r["xla_flags"] or "-",
                     f"{r['parameters']:,}", f"{r['step_seconds'] * 1000:.0f}",
                     f"{r['tokens_per_second']:,.0f}", f"{r['gflops']:.0f}",
                     f"{100 * r['mfu']:.0f}%"])
    _common.print_table("Training (model.fit), target tokens/s",
                        ["model", "XLA", "precision", "lever off", "params", "ms/step",
                         "tokens/s", "GFLOP/s", "MFU"], rows)
    for r in p.get("head_to_head", []):
        s = r["step_seconds"]
        print(f"head to head, XLA {r['jit_compile']}: ours / keras_hub "
              f"{s['keras_hub'] / s['ours']:.2f}x, ours / tutorial {s['tutorial'] / s['ours']:.2f}x")
    for r in p.get("levers", []):
        print(f"lever {r['lever']}: turning it off gives {r['speedup']:.2f}x the step time")
    for r in main_job:
        print(f"main job's shapes (tiny preset), ours, XLA {r['jit_compile']}: "
              f"{r['tokens_per_second']:,.0f} tokens/s")
    ours = best(runs, "ours")
    for other in ("keras_hub", "tutorial"):
        theirs = best(runs, other)
        if ours and theirs:
            print(f"best vs best, ours / {other}: "
                  f"{ours['tokens_per_second'] / theirs['tokens_per_second']:.2f}x")
        ours_xla = best(runs, "ours", jit_compile=True, precision="float32")
        theirs_xla = best(runs, other, jit_compile=True)
        if ours_xla and theirs_xla:
            print(f"XLA vs XLA (float32), ours / {other}: "
                  f"{ours_xla['tokens_per_second'] / theirs_xla['tokens_per_second']:.2f}x")


if __name__ == "__main__":
    main()
