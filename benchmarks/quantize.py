"""`model.quantize(mode)` on the main job's trained translator: BLEU, the
`.keras` file size and greedy decoding ms/token against the float model,
same run, same test sentences.

    python examples/translate_numbers.py --out /tmp/numbers   # trains it
    python benchmarks/quantize.py --model-dir /tmp/numbers [--modes int8 int4]
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common  # noqa: E402,F401  (sets the backend before keras is imported)
import keras  # noqa: E402
import numpy as np  # noqa: E402


def greedy_ms_per_token(model, ids, max_length, repeats):
    """Median ms per decoding step of `model.generate` (compiled; the first
    call, which traces, is left out). The loop stops once every sentence
    has ended, so the steps are the longest output's length."""
    generated = model.generate(ids, max_length=max_length)
    steps = max(1, int((generated != 0).sum(axis=1).max()))
    seconds = _common.time_call(
        lambda: model.generate(ids, max_length=max_length), warmup=1, repeats=repeats
    )
    return 1000.0 * seconds / steps


def main():
    import sacrebleu

    from keras_xformer.data import choose_length
    from keras_xformer.data import encode_source
    from keras_xformer.datasets import number_words
    from keras_xformer.text import WordPieceTokenizer

    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True,
                        help="output folder of examples/translate_numbers.py")
    parser.add_argument("--modes", nargs="+", default=["int8", "int4"])
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    source_tokenizer = WordPieceTokenizer.load(os.path.join(args.model_dir, "source_vocab.txt"))
    target_tokenizer = WordPieceTokenizer.load(os.path.join(args.model_dir, "target_vocab.txt"))
    # The main job's default split (seed 0): the same test sentences.
    train, _, test = number_words.load_data(
        train_size=24000, validation_size=500, test_size=args.test_size, seed=0
    )
    source_length = choose_length(source_tokenizer, train[0], cap=256)
    max_length = choose_length(target_tokenizer, train[1], cap=256)
    ids = encode_source(source_tokenizer, test[0], source_length).numpy()
    one = ids[:1]

    rows, results = [], {}
    for mode in [None] + args.modes:
        # Without the training state: the optimizer's moments would
        # dominate the file size.
        model = keras.models.load_model(
            os.path.join(args.model_dir, "model.keras"), compile=False
        )
        if mode is not None:
            model.quantize(mode)
        path = os.path.join(tempfile.mkdtemp(), "model.keras")
        model.save(path)
        size = os.path.getsize(path)
        model = keras.models.load_model(path, compile=False)  # what a user ships
        generated = np.concatenate([
            model.generate(ids[i : i + 250], max_length=max_length)
            for i in range(0, len(ids), 250)
        ])
        hypotheses = [t.decode("utf-8") for t in target_tokenizer.detokenize(generated).numpy()]
        bleu = sacrebleu.corpus_bleu(hypotheses, [test[1]]).score
        exact = float(np.mean([h == r for h, r in zip(hypotheses, test[1])]))
        ms1 = greedy_ms_per_token(model, one, max_length, args.repeats)
        ms8 = greedy_ms_per_token(model, ids[:8], max_length, args.repeats)
        name = mode or "float32"
        results[name] = {"bleu": bleu, "exact_match": exact, "keras_bytes": size,
                         "ms_per_token_batch1": ms1, "ms_per_token_batch8": ms8}
        rows.append((name, f"{bleu:.2f}", f"{exact:.3f}", f"{size / 1e6:.2f}",
                     f"{ms1:.2f}", f"{ms8:.2f}"))
    base = results["float32"]
    for name, r in results.items():
        r["bleu_change"] = r["bleu"] - base["bleu"]
        r["size_ratio"] = r["keras_bytes"] / base["keras_bytes"]
        r["speedup_batch1"] = base["ms_per_token_batch1"] / r["ms_per_token_batch1"]
        r["speedup_batch8"] = base["ms_per_token_batch8"] / r["ms_per_token_batch8"]
    rows = [row + (f"{results[row[0]]['bleu_change']:+.2f}",
                   f"{results[row[0]]['size_ratio']:.2f}",
                   f"{results[row[0]]['speedup_batch1']:.2f}x",
                   f"{results[row[0]]['speedup_batch8']:.2f}x") for row in rows]
    _common.print_table(
        f"model.quantize on the main job's model ({len(test[1])} test pairs, greedy, "
        f"max_length {max_length}; XLA decoding; CPU flags in the header of benchmarks/run.py)",
        ("mode", "BLEU", "exact", ".keras MB", "ms/token b1", "ms/token b8",
         "BLEU change", "size ratio", "speed-up b1", "speed-up b8"),
        rows,
    )
    _common.save_results("quantize", {"config": vars(args), "results": results})


if __name__ == "__main__":
    main()
