"""Run in a subprocess by tests/backends/test_cross_backend.py, on the
backend of `KERAS_BACKEND`: loads every `.keras` file given (or, with
`--save PATH`, first builds and saves a tiny `Transformer`; with
`--save-as PATH`, saves the last loaded model again on this backend), and
prints one JSON
line `RESULT {...}` with each model's logits and greedy / beam tokens on
fixed inputs."""

import json
import os
import sys

import keras
import numpy as np

from keras_xformer.models import Transformer

SOURCE = np.array([[5, 9, 12, 7, 3, 0], [8, 8, 21, 3, 0, 0]], "int32")
TARGET_IN = np.array([[2, 11, 6, 4], [2, 17, 9, 0]], "int32")


def outputs(model):
    return {
        "logits": np.asarray(keras.ops.convert_to_numpy(model((SOURCE, TARGET_IN)))).tolist(),
        "greedy": model.generate(SOURCE, max_length=8).tolist(),
        "beam": model.generate(SOURCE, max_length=8, method="beam", beam_size=3).tolist(),
    }


def main():
    args = sys.argv[1:]
    results = {}
    if args[0] == "--save":
        path = args[1]
        keras.utils.set_random_seed(7)
        model = Transformer(30, 30, num_layers=2, hidden_dim=32, num_heads=4,
                            intermediate_dim=64, dropout=0.1)
        model((SOURCE, TARGET_IN))
        # Scaled-up output weights: greedy and beam then pick tokens by clear
        # margins, not by float noise between backends.
        embedding = model.target_embedding.embeddings
        embedding.assign(embedding * 4.0)
        model.save(path)
        results[os.path.basename(path)] = outputs(model)
        args = args[2:]
    save_as = None
    if args and args[0] == "--save-as":
        save_as, args = args[1], args[2:]
    for path in args:
        model = keras.models.load_model(path, safe_mode=True)
        results[os.path.basename(path)] = outputs(model)
    if save_as:
        model.save(save_as)
    print("RESULT " + json.dumps({"backend": keras.backend.backend(), "models": results}))


if __name__ == "__main__":
    main()
