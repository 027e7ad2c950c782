"""Translate with an exported SavedModel, as a server or script would: this
process imports TensorFlow and TensorFlow Text, never keras_xformer.

    python examples/translate.py saved_models/numbers_en_fr/serving "forty-two" "one thousand"
    echo "seventeen" | python examples/translate.py saved_models/numbers_en_fr/serving
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 0 if argv else 2
    serving_dir, texts = argv[0], argv[1:]
    if not os.path.isdir(serving_dir):
        print(f"{serving_dir} is not a SavedModel folder (see examples/translate_numbers.py).",
              file=sys.stderr)
        return 2
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

    translate = tf.saved_model.load(serving_dir).signatures["serving_default"]

    def run(batch):
        out = translate(text=tf.constant(batch))["translation"].numpy()
        for line in out:
            print(line.decode("utf-8"), flush=True)

    if texts:
        run(texts)
    else:
        for line in sys.stdin:
            run([line.rstrip("\n")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
