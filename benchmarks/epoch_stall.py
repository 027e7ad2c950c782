"""The wait at the start of each epoch of `model.fit` on a real corpus.

Trains the `--data` recipe's model (tiny preset, joint SentencePiece,
800-token length buckets) on a corpus for a few epochs, in one of two ways:

- `per-epoch`: the dataset ends every epoch, so Keras makes a new iterator
  each epoch and destroys the previous one (what `xformer train` did until
  this script was written);
- `repeat`: the dataset repeats and `fit` gets `steps_per_epoch`, so one
  iterator serves the whole run; the validation set's number of batches
  stays unknown to Keras (bucketing hides it), so each validation pass runs
  its iterator to the end of the data;
- `counted`: as `repeat`, and the validation set carries its number of
  batches (`assert_cardinality`), so a validation pass stops at its last
  batch (what `xformer train` does now).

Prints, for every epoch, the seconds from `on_epoch_begin` to the end of its
first step, the seconds its validation pass (`evaluate`) took, and the
median step. Run the modes one after the other on an idle machine:

    python benchmarks/epoch_stall.py --mode per-epoch --epochs 4
    python benchmarks/epoch_stall.py --mode repeat --epochs 4
    python benchmarks/epoch_stall.py --mode counted --epochs 4

The corpus is `benchmarks/build_corpus.py`'s train.tsv (`--corpus DIR`, or
$KX_CORPUS, default /work/corpus).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["per-epoch", "repeat", "counted"], required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--corpus", default=os.environ.get("KX_CORPUS", "/work/corpus"))
    args = parser.parse_args(argv)

    import keras

    from keras_xformer import pipeline
    from keras_xformer.data import bucket_batch_sizes
    from keras_xformer.data import bucketed_steps
    from keras_xformer.data import make_dataset
    from keras_xformer.datasets import parallel_text
    from keras_xformer.losses import MaskedSparseCategoricalCrossentropy
    from keras_xformer.text import SentencePieceTokenizer

    path = os.path.join(args.corpus, "train.tsv")
    if not os.path.exists(path):
        raise SystemExit(f"No corpus at {path}: run benchmarks/build_corpus.py --out DIR first.")
    train, validation, _ = parallel_text.load_tsv(path, split="hash")
    tokenizer = SentencePieceTokenizer.train(list(train[0]) + list(train[1]),
                                             pipeline.default_vocabulary_size(len(train[0]), True))
    source_length, target_length, keep, lengths = pipeline.choose_lengths(
        tokenizer, tokenizer, train, percentile=99)
    train = ([s for s, k in zip(train[0], keep) if k], [t for t, k in zip(train[1], keep) if k])
    buckets = [b for b in pipeline.LENGTH_BUCKETS if b < max(source_length, target_length)]
    data = make_dataset(*train, tokenizer, tokenizer, source_length, target_length,
                        batch_size=64, seed=0, bucket_boundaries=buckets, tokens_per_batch=800)
    validation = make_dataset(*validation, tokenizer, tokenizer, source_length, target_length,
                              batch_size=64, shuffle=False, bucket_boundaries=buckets,
                              tokens_per_batch=800)
    if args.mode == "counted":
        import tensorflow as tf

        # As keras_xformer.pipeline does.
        count = int(validation.reduce(0, lambda count, _: count + 1))
        validation = validation.apply(tf.data.experimental.assert_cardinality(count))
    steps = None
    if args.mode in ("repeat", "counted"):
        sizes = bucket_batch_sizes(buckets, max(source_length, target_length), 64, 800)
        steps = bucketed_steps(lengths[0][keep], lengths[1][keep], buckets, sizes)
        data = data.repeat()

    model = pipeline.build_model("tiny", (tokenizer.vocabulary_size,) * 2, True)
    model.compile(keras.optimizers.Adam(1e-3), MaskedSparseCategoricalCrossentropy())

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.first, self.steps, self.validation = [], [], []

        def on_test_begin(self, logs=None):
            self.test_start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            # `fit` validates between the last step and `on_epoch_end`;
            # `on_test_begin` comes after the validation iterator is made,
            # so time from the last step instead.
            self.validation.append(time.perf_counter() - self.last_step_end)

        def on_epoch_begin(self, epoch, logs=None):
            self.begin = time.perf_counter()
            self.batch = None

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if batch == 0:
                self.first.append(now - self.begin)
            else:
                self.steps.append(now - self.start)
            self.last_step_end = now

    clock = Clock()
    with tempfile.TemporaryDirectory() as folder:
        # The pipeline's own callbacks, which write files at every epoch end.
        callbacks = [clock, keras.callbacks.ModelCheckpoint(
            os.path.join(folder, "best.keras"), monitor="val_loss", save_best_only=True),
            pipeline.AverageLastEpochs(3)]
        start = time.perf_counter()
        model.fit(data, validation_data=validation, epochs=args.epochs, steps_per_epoch=steps,
                  callbacks=callbacks, verbose=0)
        total = time.perf_counter() - start
    median = statistics.median(clock.steps)
    print(f"mode {args.mode}: {len(train[0])} pairs, {args.epochs} epochs in {total:.1f} s; "
          f"median step {median * 1000:.0f} ms")
    for epoch, (seconds, validating) in enumerate(zip(clock.first, clock.validation)):
        print(f"  epoch {epoch + 1}: epoch start to end of first step {seconds:.2f} s; "
              f"last step to epoch end (validation) {validating:.2f} s")
    waits = clock.first[1:]
    print(f"  epochs after the first: {sum(waits):.1f} s in all before their first step ends "
          f"(longest {max(waits, default=0):.1f} s); validation {sum(clock.validation):.1f} s "
          f"in all (longest {max(clock.validation, default=0):.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
