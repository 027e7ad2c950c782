import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_xformer.data import encode_source
from keras_xformer.datasets import number_words
from keras_xformer.export import export_saved_model
from keras_xformer.export import export_tflite
from keras_xformer.models import Transformer
from keras_xformer.text import WordPieceTokenizer

# TensorFlow-only feature (tests/conftest.py): skipped on JAX and PyTorch.
pytestmark = pytest.mark.tensorflow_only

SOURCE_LENGTH, TARGET_LENGTH = 12, 10


@pytest.fixture(scope="module")
def translator():
    (train, _, test) = number_words.load_data(train_size=400, validation_size=1, test_size=20)
    source_tokenizer = WordPieceTokenizer.train(train[0], 200)
    target_tokenizer = WordPieceTokenizer.train(train[1], 200)
    keras.utils.set_random_seed(4)
    model = Transformer(source_tokenizer.vocabulary_size, target_tokenizer.vocabulary_size,
                        num_layers=1, hidden_dim=64, num_heads=4, intermediate_dim=256,
                        tie_output_embeddings=False, dropout=0.0)
    model.build()
    # Random weights would repeat one token: spread the output bias so that
    # the generated sequences vary and some end early.
    bias = np.random.default_rng(0).normal(0, 2.0, target_tokenizer.vocabulary_size)
    model.output_projection.bias.assign(bias.astype("float32"))
    return model, source_tokenizer, target_tokenizer, test[0]


def keras_translate(model, source_tokenizer, target_tokenizer, texts):
    ids = encode_source(source_tokenizer, texts, SOURCE_LENGTH).numpy()
    out = model.generate(ids, max_length=TARGET_LENGTH)
    return [t.decode() for t in target_tokenizer.detokenize(out).numpy()]


LOADER = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # registers the tokenizer ops
translate = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
texts = json.loads(sys.stdin.read())
inputs = [t.encode("latin-1") if isinstance(t, str) and t.startswith("BYTES:") else t
          for t in texts]
inputs = [bytes.fromhex(t[6:].decode()) if isinstance(t, bytes) else t for t in inputs]
out = translate(text=tf.constant(inputs))["translation"].numpy()
assert not any(m.startswith("keras_xformer") for m in sys.modules)
print(json.dumps([t.decode("utf-8", "replace") for t in out]))
"""


SAVED_MODEL_CLI = (
    "import sys, tensorflow_text; from tensorflow.python.tools import saved_model_cli; "
    "sys.argv[0] = 'saved_model_cli'; saved_model_cli.main()"
)


def test_saved_model_serves_strings_without_keras_xformer(translator, tmp_path):
    model, source_tokenizer, target_tokenizer, texts = translator
    path = str(tmp_path / "serving")
    export_saved_model(path, model, source_tokenizer, target_tokenizer,
                       SOURCE_LENGTH, TARGET_LENGTH)
    bad = ["", "x" * 10_000, "vingt-deux ñ 東京 🙂", "BYTES:" + b"\xff\xfeabc\xc3".hex()]
    result = subprocess.run(
        [sys.executable, "-c", LOADER, path], input=json.dumps(texts + bad),
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served[: len(texts)] == keras_translate(model, source_tokenizer, target_tokenizer, texts)
    assert len(served) == len(texts) + len(bad)  # bad inputs still get a result

    # examples/translate.py: arguments, then standard input, one line each.
    script = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "translate.py")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    by_args = subprocess.run([sys.executable, script, path, *texts[:3]], capture_output=True,
                             text=True, timeout=300, env=env)
    assert by_args.returncode == 0, by_args.stderr[-2000:]
    assert by_args.stdout.splitlines() == served[:3]
    by_stdin = subprocess.run([sys.executable, script, path], input="\n".join(texts[:2]) + "\n",
                              capture_output=True, text=True, timeout=300, env=env)
    assert by_stdin.stdout.splitlines() == served[:2]

    show = subprocess.run(["saved_model_cli", "show", "--dir", path, "--all"],
                          capture_output=True, text=True, timeout=300)
    assert show.returncode == 0, show.stderr[-2000:]
    assert "serving_default" in show.stdout and "text" in show.stdout
    assert "translation" in show.stdout
    # `saved_model_cli run` must have the TensorFlow Text ops registered (as
    # TF Serving's model server has): start it from a Python that imported
    # tensorflow_text.
    run = subprocess.run(
        [sys.executable, "-c", SAVED_MODEL_CLI, "run", "--dir", path, "--tag_set", "serve",
         "--signature_def", "serving_default",
         "--input_exprs", f"text={texts[:2]!r}"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "translation" in run.stdout


def run_tflite(path, source_ids):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    runner = interpreter.get_signature_runner("serving_default")
    return np.concatenate(
        [runner(source_ids=row[None].astype("int32"))["target_ids"] for row in source_ids]
    )


def test_tflite_matches_generate_and_quantizes(translator, tmp_path):
    model, source_tokenizer, _, texts = translator
    source_ids = encode_source(source_tokenizer, texts, SOURCE_LENGTH).numpy()
    expected = model.generate(source_ids, max_length=TARGET_LENGTH)
    sizes = {}
    for quantization in (None, "dynamic_int8", "float16"):
        path = str(tmp_path / f"model_{quantization}.tflite")
        sizes[quantization] = export_tflite(path, model, SOURCE_LENGTH, TARGET_LENGTH,
                                            quantization=quantization)
        assert os.path.getsize(path) == sizes[quantization]
        actual = run_tflite(path, source_ids)
        assert actual.shape == expected.shape and actual.dtype == np.int32
        if quantization is None:
            np.testing.assert_array_equal(actual, expected)
        else:
            assert np.mean(actual == expected) > 0.5, quantization
    assert sizes["dynamic_int8"] <= 0.45 * sizes[None]
    assert sizes["float16"] < 0.75 * sizes[None]


def test_export_rejects_bad_arguments(translator, tmp_path):
    model, source_tokenizer, target_tokenizer, _ = translator
    with pytest.raises(ValueError, match="quantization"):
        export_tflite(str(tmp_path / "x.tflite"), model, 8, 8, quantization="int4")
    with pytest.raises(ValueError, match="source_length"):
        export_tflite(str(tmp_path / "x.tflite"), model, 0, 8)
    with pytest.raises(ValueError, match="Transformer"):
        export_saved_model(str(tmp_path / "s"), keras.Sequential(), source_tokenizer,
                           target_tokenizer, 8, 8)


def run_tflite_batches(path, source_ids, batch_size):
    """Runs a fixed-batch file over `source_ids`, `batch_size` rows a call."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path).get_signature_runner("serving_default")
    return np.concatenate([
        runner(source_ids=source_ids[i:i + batch_size].astype("int32"))["target_ids"]
        for i in range(0, len(source_ids), batch_size)
    ])


def strided_slices_over(path, width):
    """The STRIDED_SLICE ops of a TFLite file whose input's last axis has
    `width` entries: `(subgraph, input shape)` pairs."""
    from tensorflow.lite.python import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(f.read(), 0))
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    found = []
    for index, subgraph in enumerate(model.subgraphs):
        for op in subgraph.operators:
            if codes[op.opcodeIndex] != schema.BuiltinOperator.STRIDED_SLICE:
                continue
            shape = list(subgraph.tensors[op.inputs[0]].shape)
            if shape and shape[-1] == width:
                found.append((index, shape))
    return found


def softmax_input_producers(path):
    """The names of the ops whose outputs TFLite's SOFTMAX ops read, over
    every subgraph of a file."""
    from tensorflow.lite.python import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(f.read(), 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    found = set()
    for subgraph in model.subgraphs:
        producer = {t: codes[op.opcodeIndex] for op in subgraph.operators for t in op.outputs}
        for op in subgraph.operators:
            if codes[op.opcodeIndex] == schema.BuiltinOperator.SOFTMAX:
                found.add(names.get(producer.get(op.inputs[0]), "a subgraph input"))
    return found


def test_tflite_beam_at_batch_2_matches_generate(translator, tmp_path):
    model, source_tokenizer, _, texts = translator
    source_ids = encode_source(source_tokenizer, texts[:8], SOURCE_LENGTH).numpy()
    expected = model.generate(source_ids, max_length=TARGET_LENGTH, method="beam",
                              beam_size=3, length_penalty=0.6)
    greedy = model.generate(source_ids, max_length=TARGET_LENGTH)
    # Otherwise the test could not tell a beam file from a greedy one.
    assert (expected != greedy).any()
    path = str(tmp_path / "beam.tflite")
    export_tflite(path, model, SOURCE_LENGTH, TARGET_LENGTH, batch_size=2,
                  method="beam", beam_size=3, length_penalty=0.6)
    actual = run_tflite_batches(path, source_ids, 2)
    assert actual.shape == expected.shape and actual.dtype == np.int32
    np.testing.assert_array_equal(actual, expected)
    # A step's logits come out of the loop body by a reshape: TFLite's
    # STRIDED_SLICE copies an element at a time (15% of a beam b8 step).
    assert strided_slices_over(path, model.target_vocabulary_size) == []
    # The attention masks its scores with a MINIMUM, an XNNPACK op, not a
    # SELECT_V2, which split XNNPACK's graph at every attention.
    assert softmax_input_producers(path) == {"MINIMUM"}


def test_tflite_greedy_at_batch_2_keeps_rows_independent(translator, tmp_path):
    model, source_tokenizer, _, texts = translator
    lengths = [len(t.split()) for t in texts]
    long_text, short_text = texts[int(np.argmax(lengths))], texts[int(np.argmin(lengths))]
    source_ids = encode_source(source_tokenizer, [long_text, short_text], SOURCE_LENGTH).numpy()
    # The short row is 0-padded where the long one is not.
    assert (source_ids[1] == 0).sum() > (source_ids[0] == 0).sum()
    path = str(tmp_path / "greedy2.tflite")
    export_tflite(path, model, SOURCE_LENGTH, TARGET_LENGTH, batch_size=2)
    expected = model.generate(source_ids, max_length=TARGET_LENGTH)
    np.testing.assert_array_equal(run_tflite_batches(path, source_ids, 2), expected)
    assert strided_slices_over(path, model.target_vocabulary_size) == []
    assert softmax_input_producers(path) == {"MINIMUM"}  # not SELECT_V2 (see above)
    # A batch filled up with an all-padding row: the real row is unchanged.
    filled = np.stack([source_ids[0], np.zeros_like(source_ids[0])])
    actual = run_tflite_batches(path, filled, 2)
    np.testing.assert_array_equal(
        actual[0], model.generate(source_ids[:1], max_length=TARGET_LENGTH)[0])
    assert actual.shape == (2, TARGET_LENGTH)


def test_tflite_rejects_bad_batch_and_search_arguments(translator, tmp_path):
    model = translator[0]
    path = str(tmp_path / "x.tflite")
    cases = [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2.0), "batch_size"),
        (dict(method="sample"), "method"),
        (dict(method="beam", beam_size=0), "beam_size"),
        (dict(method="beam", beam_size=model.target_vocabulary_size + 1), "vocabulary"),
        (dict(method="beam", length_penalty=-1.0), "length_penalty"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            export_tflite(path, model, 8, 8, **kwargs)
    assert not os.path.exists(path)


def test_tflite_exports_a_mixed_precision_model_in_float32(translator, tmp_path):
    """A model trained under mixed_bfloat16 exports (TFLite has no bfloat16
    kernels) and its file decodes as the same weights do in float32."""
    model, source_tokenizer, _, sources = translator
    source_ids = encode_source(source_tokenizer, sources[:3], SOURCE_LENGTH).numpy()
    config = model.get_config()
    config["dtype"] = "mixed_bfloat16"
    mixed = Transformer.from_config(config)
    mixed.build()
    mixed.set_weights(model.get_weights())
    assert mixed.compute_dtype == "bfloat16"
    path = str(tmp_path / "mixed.tflite")
    export_tflite(path, mixed, SOURCE_LENGTH, TARGET_LENGTH)
    expected = model.generate(source_ids, max_length=TARGET_LENGTH)
    np.testing.assert_array_equal(run_tflite(path, source_ids), expected)
