"""Fine-tune the trained number translator on new data with LoRA.

The main job (examples/translate_numbers.py) learns numbers up to 999,999.
This script adapts its model to numbers up to 999,999,999 (millions: new
words and longer sentences) by training only rank-`r` LoRA adapters
(`Transformer.enable_lora`), and reports the share of trainable weights and
BLEU / exact match before and after, on the new data and on the original
test set (what the adapters cost on the old task).

    python examples/translate_numbers.py --out saved_models/numbers_en_fr
    python examples/lora_finetune.py --model-dir saved_models/numbers_en_fr
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True,
                        help="output folder of examples/translate_numbers.py")
    parser.add_argument("--out", default=None,
                        help="where to write lora_model.keras and lora_metrics.json "
                             "(default: --model-dir)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import sacrebleu

    from keras_xformer.data import choose_length
    from keras_xformer.data import encode_source
    from keras_xformer.data import make_dataset
    from keras_xformer.datasets import number_words
    from keras_xformer.losses import MaskedSparseCategoricalCrossentropy
    from keras_xformer.metrics import MaskedAccuracy
    from keras_xformer.text import WordPieceTokenizer

    out = args.out or args.model_dir
    os.makedirs(out, exist_ok=True)
    source_tokenizer = WordPieceTokenizer.load(os.path.join(args.model_dir, "source_vocab.txt"))
    target_tokenizer = WordPieceTokenizer.load(os.path.join(args.model_dir, "target_vocab.txt"))
    model = keras.models.load_model(os.path.join(args.model_dir, "model.keras"))

    # New data: another seed and numbers up to 999,999,999. The original
    # test split (seed 0, up to 999,999) measures forgetting.
    new_train, _, new_test = number_words.load_data(
        train_size=args.train_size, validation_size=10, test_size=args.test_size,
        seed=7, max_number=999_999_999,
    )
    _, _, old_test = number_words.load_data(
        train_size=24000, validation_size=500, test_size=1000, seed=0
    )
    source_length = choose_length(source_tokenizer, new_train[0], cap=256)
    target_length = choose_length(target_tokenizer, new_train[1], cap=256)

    def evaluate(texts, references):
        outputs = []
        for i in range(0, len(texts), 250):
            ids = encode_source(source_tokenizer, texts[i : i + 250], source_length)
            generated = model.generate(ids.numpy(), max_length=target_length)
            outputs += [t.decode("utf-8") for t in target_tokenizer.detokenize(generated).numpy()]
        return {
            "bleu": sacrebleu.corpus_bleu(outputs, [references]).score,
            "exact_match": float(np.mean([o == r for o, r in zip(outputs, references)])),
        }

    before = {"new": evaluate(*new_test), "original": evaluate(*old_test)}
    total = model.count_params()
    model.enable_lora(args.rank)
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    print(f"LoRA rank {args.rank}: {trainable:,} trainable of {total + trainable:,} "
          f"weights ({100 * trainable / (total + trainable):.2f}%)")

    data = make_dataset(*new_train, source_tokenizer, target_tokenizer,
                        source_length, target_length, batch_size=64)
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=MaskedSparseCategoricalCrossentropy(label_smoothing=0.1),
        metrics=[MaskedAccuracy()],
    )
    start = time.perf_counter()
    model.fit(data, epochs=args.epochs, verbose=2)
    seconds = time.perf_counter() - start
    after = {"new": evaluate(*new_test), "original": evaluate(*old_test)}

    path = os.path.join(out, "lora_model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    ids = encode_source(source_tokenizer, new_test[0][:16], source_length).numpy()
    assert (reloaded.generate(ids, max_length=target_length)
            == model.generate(ids, max_length=target_length)).all()

    metrics = {
        "rank": args.rank, "trainable_weights": trainable,
        "total_weights": total + trainable,
        "trainable_share": trainable / (total + trainable),
        "train_pairs": len(new_train[0]), "epochs": args.epochs,
        "train_seconds": seconds, "before": before, "after": after,
    }
    with open(os.path.join(out, "lora_metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    for name in ("new", "original"):
        print(f"{name:>8} test: BLEU {before[name]['bleu']:.2f} -> {after[name]['bleu']:.2f}, "
              f"exact match {before[name]['exact_match']:.3f} -> {after[name]['exact_match']:.3f}")
    print(f"Saved {path} (reloads with the same outputs) and lora_metrics.json")


if __name__ == "__main__":
    main()
