"""Latency of one translation (batch 1) through the exported SavedModel and
the TFLite files (float32 and dynamic int8) in LiteRT, and their sizes.

Uses the artefacts of the main job (run `python examples/translate_numbers.py`
first), or `--folder` for another output folder.

    python benchmarks/export.py [--folder saved_models/numbers_en_fr]
"""

import argparse
import os

import _common
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the SavedModel's tokenizer ops)
from ai_edge_litert.interpreter import Interpreter

SENTENCES = [
    "seven hundred and thirty-one thousand, two hundred and twelve",
    "eighty-six thousand and thirty-eight",
    "forty-two",
]


def folder_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", default=os.path.join("saved_models", "numbers_en_fr"))
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    serving = os.path.join(args.folder, "serving")
    if not os.path.isdir(serving):
        raise SystemExit(f"{serving} not found: run examples/translate_numbers.py first.")
    translate = tf.saved_model.load(serving).signatures["serving_default"]
    rows, results = [], {}
    for sentence in SENTENCES:
        text = tf.constant([sentence])
        seconds = _common.time_call(lambda: translate(text=text)["translation"].numpy(),
                                    warmup=2, repeats=args.repeats)
        results.setdefault("serving_ms", []).append(seconds * 1e3)
    rows.append(("SavedModel (text in, text out)", f"{np.median(results['serving_ms']):.2f}",
                 f"{folder_size(serving) / 2**20:.2f}"))

    # The TFLite files take ids: tokenize with the SavedModel's own graph-free
    # twin, the saved vocabulary (as a phone app would ship it).
    from keras_xformer.data import encode_source
    from keras_xformer.text import WordPieceTokenizer

    tokenizer = WordPieceTokenizer.load(os.path.join(args.folder, "source_vocab.txt"))
    for name in ("translator.tflite", "translator_int8.tflite"):
        path = os.path.join(args.folder, name)
        runner = Interpreter(model_path=path).get_signature_runner("serving_default")
        length = runner.get_input_details()["source_ids"]["shape"][1]
        times = []
        for sentence in SENTENCES:
            ids = encode_source(tokenizer, [sentence], int(length)).numpy()
            times.append(_common.time_call(lambda: runner(source_ids=ids), warmup=2,
                                           repeats=args.repeats) * 1e3)
        results[f"{name}_ms"] = times
        rows.append((f"LiteRT {name}", f"{np.median(times):.2f}",
                     f"{os.path.getsize(path) / 2**20:.2f}"))
    _common.print_table("One translation, batch 1 (median over the sentences)",
                        ("artefact", "ms", "MB"), rows)
    _common.save_results("export", {"rows": rows, "results": results})


if __name__ == "__main__":
    main()
