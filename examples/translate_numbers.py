"""Train a Transformer to translate number words (English to French), then
evaluate and export it.

    python examples/translate_numbers.py                 # the default run
    python examples/translate_numbers.py --pair en-de --epochs 4
    python examples/translate_numbers.py --data pairs.tsv --out saved_models/mine

Writes to `--out` (default `saved_models/numbers_en_fr/`): `model.keras`,
`source_vocab.txt`, `target_vocab.txt`, `metrics.json`, `attention.png`,
and the exports `serving/`, `translator.tflite`, `translator_int8.tflite`
when `keras_xformer.export` is available. Killed and started again with the
same command, it resumes from its last completed epoch.

On several machines (or processes), start the same command on each with its
`TF_CONFIG` (see the README, "Training on several machines"): they train one
model with `MultiWorkerMirroredStrategy`, `--batch-size` being the global
batch; only the chief writes to `--out`, the other workers keep their files
in a temporary folder. With more than one GPU, `MirroredStrategy` is used.

The job itself is `keras_xformer.pipeline` (also `xformer train`); this
script keeps the number-words defaults.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_xformer.pipeline import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
