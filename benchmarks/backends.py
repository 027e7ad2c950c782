"""The same model on every Keras 3 backend, in turns, in one run.

    python benchmarks/backends.py                 # about 12 minutes here
    python benchmarks/backends.py --steps 6 --rounds 2
    # On a GPU machine without TensorFlow (Keras on JAX carried as wheels):
    python benchmarks/backends.py --backends jax torch --precisions float32 mixed_bfloat16

1. Training (the configuration of benchmarks/train.py: width 256, 8 heads,
   feed-forward 1024, 4+4 layers, vocabulary 8000, length 64, batch 64,
   dropout 0.1, label smoothing 0.1): target tokens per second of
   `train_on_batch` (the step `fit` runs), TensorFlow (kernels and XLA)
   against JAX (`jax.jit`, Keras' only fast mode there) and Keras' PyTorch
   backend against the same model written in plain PyTorch
   (`nn.TransformerEncoder/Decoder`, learned positions, post-LN, same
   sizes, `F.cross_entropy` with the same smoothing and padding id), the
   last two stepped alternately in one process.
2. Greedy decoding (the configuration of benchmarks/generate.py: 4+4
   layers, width 256, source 64, 64 new tokens, [END] made unreachable so
   every call decodes all 64): ms per token of the second and later calls
   of `Transformer.generate` with the same shapes (TensorFlow XLA, JAX
   `jax.jit`, PyTorch eager).
3. Dropout of 1M elements under `jax.jit`: Keras' (`jax.random` threefry)
   against our hashed masks (keras_xformer/layers/_dropout.py).

On a GPU, JAX and Keras' torch backend place everything on it, and the
plain PyTorch model is moved there too; `--precisions mixed_bfloat16` adds
training under that dtype policy (where `ops.dot_product_attention` can take
cuDNN's flash kernel).

Each backend runs in a child process (a process has one Keras backend);
rounds alternate the children so that drift hits all alike. Compare the
ratios, not the absolute times, across runs.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

TRAIN = dict(hidden_dim=256, num_heads=8, intermediate_dim=1024, num_layers=4,
             vocabulary_size=8000, length=64, batch=64, dropout=0.1, smoothing=0.1)
GENERATE = dict(vocabulary_size=8000, hidden_dim=256, num_heads=8, intermediate_dim=1024,
                num_layers=4, source=64, new=64)


def train_data(c, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    source = rng.integers(4, c["vocabulary_size"], (c["batch"], c["length"])).astype("int32")
    target = rng.integers(4, c["vocabulary_size"], (c["batch"], c["length"] + 1)).astype("int32")
    return source, target[:, :-1], target[:, 1:]


def keras_train_step(c, jit_compile, policy="float32"):
    import keras

    from keras_xformer.losses import MaskedSparseCategoricalCrossentropy
    from keras_xformer.models import Transformer

    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(policy)
    model = Transformer(
        c["vocabulary_size"], c["vocabulary_size"], num_layers=c["num_layers"],
        hidden_dim=c["hidden_dim"], num_heads=c["num_heads"],
        intermediate_dim=c["intermediate_dim"], dropout=c["dropout"],
        max_length=c["length"], positional="learned", share_embeddings=False,
        tie_output_embeddings=False,
    )
    model.compile(keras.optimizers.Adam(1e-4),
                  MaskedSparseCategoricalCrossentropy(label_smoothing=c["smoothing"]),
                  jit_compile=jit_compile)
    source, target_in, labels = train_data(c)
    return lambda: model.train_on_batch((source, target_in), labels)


def torch_train_step(c):
    """The same model in plain PyTorch: `nn.TransformerEncoder/Decoder`."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    d, v, n = c["hidden_dim"], c["vocabulary_size"], c["num_layers"]

    class Seq2Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.source_embedding = nn.Embedding(v, d, padding_idx=0)
            self.target_embedding = nn.Embedding(v, d, padding_idx=0)
            self.source_positions = nn.Parameter(torch.randn(c["length"], d) * 0.02)
            self.target_positions = nn.Parameter(torch.randn(c["length"], d) * 0.02)
            layer = dict(d_model=d, nhead=c["num_heads"], dim_feedforward=c["intermediate_dim"],
                         dropout=c["dropout"], batch_first=True, norm_first=False)
            self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), n,
                                                 enable_nested_tensor=False)
            self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), n)
            self.dropout = nn.Dropout(c["dropout"])
            self.output = nn.Linear(d, v)

        def forward(self, source, target):
            t = target.shape[1]
            x = self.dropout(self.source_embedding(source) * d**0.5
                             + self.source_positions[: source.shape[1]])
            y = self.dropout(self.target_embedding(target) * d**0.5 + self.target_positions[:t])
            source_pad = source == 0
            memory = self.encoder(x, src_key_padding_mask=source_pad)
            causal = nn.Transformer.generate_square_subsequent_mask(t, device=target.device)
            y = self.decoder(y, memory, tgt_mask=causal, tgt_is_causal=True,
                             tgt_key_padding_mask=target == 0,
                             memory_key_padding_mask=source_pad)
            return self.output(y)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = Seq2Seq().to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    source, target_in, labels = (torch.from_numpy(a).long().to(device) for a in train_data(c))

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = model(source, target_in)
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, v), labels.reshape(-1), ignore_index=0,
            label_smoothing=c["smoothing"])
        loss.backward()
        optimizer.step()
        return float(loss)

    return step


def generate_model(c):
    import keras
    import numpy as np

    from keras_xformer.models import Transformer

    keras.utils.set_random_seed(0)
    model = Transformer(c["vocabulary_size"], c["vocabulary_size"], num_layers=c["num_layers"],
                        hidden_dim=c["hidden_dim"], num_heads=c["num_heads"],
                        intermediate_dim=c["intermediate_dim"], dropout=0.0,
                        tie_output_embeddings=False)
    model.build()
    bias = keras.ops.convert_to_numpy(model.output_projection.bias).copy()
    bias[[0, 3]] = -1e4  # no [PAD], no [END]: every call decodes all tokens
    model.output_projection.bias.assign(bias)
    return model


def median_seconds(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def child(args):
    import keras
    import numpy as np

    backend = keras.backend.backend()
    out = {}
    tokens = TRAIN["batch"] * TRAIN["length"]
    if args.part == "train":
        if backend == "torch":
            # Ours on Keras' torch backend and plain PyTorch, step by step in turns.
            ours, plain = keras_train_step(TRAIN, False, args.policy), torch_train_step(TRAIN)
            for _ in range(args.warmup):
                ours(), plain()
            times = {"keras_torch": [], "plain_torch": []}
            for _ in range(args.steps):
                for name, step in (("keras_torch", ours), ("plain_torch", plain)):
                    start = time.perf_counter()
                    step()
                    times[name].append(time.perf_counter() - start)
            out = {k: tokens / statistics.median(v) for k, v in times.items()}
        else:
            jit = args.jit == "true"
            seconds = median_seconds(keras_train_step(TRAIN, jit, args.policy),
                                     args.warmup, args.steps)
            out = {f"{backend}_{'xla' if jit else 'kernels'}": tokens / seconds}
        if args.policy != "float32":
            out = {f"{k}_{args.policy}": v for k, v in out.items() if not k.startswith("plain")}
    elif args.part == "generate":
        model = generate_model(GENERATE)
        for batch in args.batches:
            source = np.random.default_rng(batch).integers(
                4, GENERATE["vocabulary_size"], (batch, GENERATE["source"])).astype("int32")
            call = lambda: model.generate(source, max_length=GENERATE["new"])  # noqa: E731
            start = time.perf_counter()
            call()
            first = time.perf_counter() - start
            seconds = median_seconds(call, 0, args.repeats)
            out[f"batch={batch}"] = {"ms_per_token": 1000 * seconds / GENERATE["new"],
                                     "first_call_s": first}
    elif args.part == "dropout":
        import jax

        from keras_xformer.layers._dropout import Dropout

        x = jax.numpy.asarray(np.random.default_rng(0).standard_normal((64, 64, 256)), "float32")
        for name, layer in (("keras_threefry", keras.layers.Dropout(0.1, seed=1)),
                            ("ours_hashed", Dropout(0.1, seed=1))):
            layer.build(x.shape)
            state = [v.value for v in layer.non_trainable_variables]
            step = jax.jit(lambda s, x, layer=layer: layer.stateless_call([], s, x, training=True)[0])
            out[name] = 1000 * median_seconds(lambda: step(state, x).block_until_ready(), 2, 9)
    print("RESULT " + json.dumps(out))


def run_child(backend, *extra):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, __file__, "--child", *extra], env=env,
                          capture_output=True, text=True)
    lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{backend} {extra} failed:\n{done.stderr[-4000:]}")
    # As it comes, so that a run cut short still shows what it measured.
    print(f"{backend} {' '.join(extra)}: {lines[-1][7:]}", flush=True)
    return json.loads(lines[-1][7:])


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    wanted = ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]
                    return f"{name}; " + " ".join(f for f in wanted if f in flags)
    except OSError:
        pass
    return "unknown CPU"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--part", default="train", help=argparse.SUPPRESS)
    parser.add_argument("--jit", default="false", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per child")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="turns of every child")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3, help="timed generate calls")
    parser.add_argument("--torch-generate-batches", type=int, nargs="+", default=[1])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"],
                        help="which backends to run (a GPU machine may have no TensorFlow)")
    parser.add_argument("--precisions", nargs="+", default=["float32"],
                        help="dtype policies to train under (e.g. float32 mixed_bfloat16)")
    parser.add_argument("--policy", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup),
              "--repeats", str(args.repeats)]
    train, generate, dropout = {}, {}, {}
    for _ in range(args.rounds):
        for policy in args.precisions:
            for backend, jit in (("tensorflow", "false"), ("tensorflow", "true"),
                                 ("jax", "true"), ("torch", "false")):
                if backend not in args.backends:
                    continue
                for k, v in run_child(backend, "--part", "train", "--jit", jit,
                                      "--policy", policy, *common).items():
                    train.setdefault(k, []).append(v)
        for backend, batches in (("tensorflow", args.batches), ("jax", args.batches),
                                 ("torch", args.torch_generate_batches)):
            if backend not in args.backends:
                continue
            result = run_child(backend, "--part", "generate", "--batches",
                               *map(str, batches), *common)
            for k, v in result.items():
                generate.setdefault(backend, {}).setdefault(k, []).append(v["ms_per_token"])
        if "jax" in args.backends:
            for k, v in run_child("jax", "--part", "dropout").items():
                dropout.setdefault(k, []).append(v)
    med = lambda values: statistics.median(values)  # noqa: E731
    train = {k: med(v) for k, v in train.items()}
    generate = {b: {k: med(v) for k, v in r.items()} for b, r in generate.items()}
    dropout = {k: med(v) for k, v in dropout.items()}
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores")
    anchor = [train[k] for k in ("tensorflow_kernels", "tensorflow_xla") if k in train]
    # Without TensorFlow (a GPU machine), ratios are against JAX's float32 step.
    anchor, anchor_name = ((max(anchor), "TF best") if anchor
                           else (train.get("jax_xla", float("nan")), "JAX float32"))
    rows = [[k, f"{v:,.0f}", f"{v / anchor:.2f}x"] for k, v in train.items()]
    if "plain_torch" in train:
        rows.append(["plain PyTorch / Keras torch", "",
                     f"{train['plain_torch'] / train['keras_torch']:.2f}x"])
    print(f"\nTraining, target tokens/s (steps {args.steps}, rounds {args.rounds})")
    for row in [["case", "tokens/s", f"vs {anchor_name}"], *rows]:
        print("  ".join(f"{x:<28}" for x in row))
    print("\nGreedy generate, ms/token (second and later calls, 64 new tokens)")
    for backend, r in generate.items():
        for k, v in r.items():
            base = generate.get("tensorflow", {}).get(k, float("nan"))
            print(f"{backend:<12}{k:<10}{v:8.2f} ms/token  {v / base:.2f}x TensorFlow XLA's time")
    if dropout:
        print(f"\nDropout of 1M elements under jax.jit, ms: Keras (threefry) "
              f"{dropout['keras_threefry']:.2f}, ours (hashed) {dropout['ours_hashed']:.2f}")
    sys.path.insert(0, HERE)
    import _common

    _common.save_results("backends", {"train_tokens_per_s": train, "generate_ms_per_token": generate,
                                      "dropout_ms": dropout, "args": vars(args), "cpu": cpu_flags()})


if __name__ == "__main__":
    main()
