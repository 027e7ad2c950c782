"""Real (non-padding) target tokens per second in `model.fit` on a
mixed-length corpus, with and without `bucket_by_sequence_length`.

The corpus mixes short and long sentence pairs (1 to 40 words, most of them
short, as in Tatoeba-like data); the model is the tiny preset.

    python benchmarks/bucketing.py [--steps 60]
"""

import argparse
import time

import _common
import keras
import numpy as np

from keras_xformer.data import choose_length
from keras_xformer.data import make_dataset
from keras_xformer.losses import MaskedSparseCategoricalCrossentropy
from keras_xformer.models import Transformer
from keras_xformer.text import WordPieceTokenizer


def corpus(n, seed=0):
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(300)]
    lengths = np.minimum(rng.geometric(0.12, n), 40)
    sources = [" ".join(rng.choice(words, k)) for k in lengths]
    targets = [" ".join(reversed(s.split())) for s in sources]
    return sources, targets


def measure(dataset, model, steps):
    """Tokens/s over `steps` batches, after one warm-up pass over the same
    batches (so every batch shape is traced before timing)."""
    batches = list(dataset.take(steps))
    for (source, target_in), labels in batches:
        model.train_on_batch((source, target_in), labels)
    real = sum(int(np.count_nonzero(labels.numpy())) for _, labels in batches)
    start = time.perf_counter()
    for (source, target_in), labels in batches:
        model.train_on_batch((source, target_in), labels)
    return real / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    sources, targets = corpus(args.batch_size * args.steps)
    tokenizer = WordPieceTokenizer.train(sources, 400)
    length = choose_length(tokenizer, sources)
    print(f"{len(sources)} pairs, mean {np.mean([len(s.split()) for s in sources]):.1f} words, "
          f"longest {length - 1} tokens")
    rates = {}
    for name, boundaries in (("padded to the longest", None),
                             ("bucketed", [4, 8, 12, 16, 24, 32])):
        keras.utils.set_random_seed(0)
        model = Transformer.from_preset("tiny", source_vocabulary_size=tokenizer.vocabulary_size,
                                        target_vocabulary_size=tokenizer.vocabulary_size)
        model.compile("adam", MaskedSparseCategoricalCrossentropy(), jit_compile=False)
        dataset = make_dataset(sources, targets, tokenizer, tokenizer, length, length,
                               batch_size=args.batch_size, seed=0, bucket_boundaries=boundaries)
        rates[name] = measure(dataset, model, args.steps)
    rows = [(k, f"{v:,.0f}") for k, v in rates.items()]
    gain = rates["bucketed"] / rates["padded to the longest"]
    rows.append(("bucketed / padded", f"{gain:.2f}x"))
    _common.print_table("Real target tokens per second in training (tiny preset, jit_compile=False)",
                        ("batching", "tokens/s"), rows)
    _common.save_results("bucketing", {"tokens_per_second": rates, "speedup": gain})


if __name__ == "__main__":
    main()
