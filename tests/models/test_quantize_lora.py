"""`Transformer.quantize` and `Transformer.enable_lora`: generate still
works, `.keras` round trips keep them."""

import os

import keras
import numpy as np
import pytest

from keras_xformer.models import Transformer

SOURCE = np.random.default_rng(0).integers(4, 50, (2, 7))
TARGET = np.random.default_rng(1).integers(4, 60, (2, 5))


def tiny(**overrides):
    keras.utils.set_random_seed(0)
    model = Transformer.from_preset(
        "tiny", source_vocabulary_size=50, target_vocabulary_size=60,
        share_embeddings=False, num_layers=1, hidden_dim=32, num_heads=4,
        intermediate_dim=64, **overrides,
    )
    model.build()
    return model


# int4 (and int8/int4 on the trained model) in benchmarks/quantize.py.
@pytest.mark.parametrize("mode", ["int8"])
def test_quantized_generate_and_roundtrip(mode, tmp_path):
    model = tiny()
    reference = np.asarray(model((SOURCE, TARGET)))
    model.generate(SOURCE, max_length=6)  # traced before quantize: must not be reused
    model.quantize(mode)
    quantized = [l for l in model._flatten_layers() if l.quantization_mode == mode]
    # 2 embeddings, 4 + 8 attention projections, 2 x 2 feed-forward.
    assert len(quantized) == 2 + 12 + 4
    logits = np.asarray(model((SOURCE, TARGET)))
    assert np.abs(logits - reference).max() < 0.2 * np.abs(reference).max()
    generated = model.generate(SOURCE, max_length=6)
    expected = np.argmax(np.asarray(model((SOURCE, np.concatenate(
        [np.full((2, 1), 2), generated[:, :1]], axis=1))))[:, 0], -1)
    np.testing.assert_array_equal(generated[:, 0], expected)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(restored((SOURCE, TARGET))), logits, atol=1e-5)
    np.testing.assert_array_equal(restored.generate(SOURCE, max_length=6), generated)


def test_lora_trains_only_adapters_and_roundtrips(tmp_path):
    model = tiny()
    before = np.asarray(model((SOURCE, TARGET)))
    model.generate(SOURCE, max_length=6)
    chosen = model.enable_lora(4)
    assert {l.name for l in chosen} == {
        "query", "key", "value", "attention_output", "inner", "output", "token_embedding"}
    assert all("lora" in v.path for v in model.trainable_variables)
    share = sum(int(np.prod(v.shape)) for v in model.trainable_variables) / sum(
        int(np.prod(v.shape)) for v in model.weights)
    assert 0 < share < 0.5
    np.testing.assert_allclose(np.asarray(model((SOURCE, TARGET))), before, atol=1e-5)
    model.compile("adam", "mse")
    model.fit((SOURCE, TARGET), np.zeros((2, 5, 60)), epochs=2, verbose=0)
    after = np.asarray(model((SOURCE, TARGET)))
    assert np.abs(after - before).max() > 1e-4
    path = os.path.join(tmp_path, "lora.keras")
    model.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(restored((SOURCE, TARGET))), after, atol=1e-4)
    assert sorted(v.path for v in restored.trainable_variables) == sorted(
        v.path for v in model.trainable_variables)
    np.testing.assert_array_equal(restored.generate(SOURCE, max_length=6),
                                  model.generate(SOURCE, max_length=6))


@pytest.mark.tensorflow_only
def test_export_tflite_accepts_a_quantized_model(tmp_path):
    from keras_xformer.export import export_tflite
    from keras_xformer.layers._quantization import dequantized_copy

    interpreter = pytest.importorskip("ai_edge_litert.interpreter")
    model = tiny()
    model.quantize("int8")
    path = os.path.join(tmp_path, "model.tflite")
    export_tflite(path, model, 7, 6, quantization="dynamic_int8")
    runner = interpreter.Interpreter(model_path=path).get_signature_runner()
    ids = runner(source_ids=SOURCE[:1].astype("int32"))["target_ids"]
    assert ids.shape == (1, 6)
    # Unquantized, the file computes what the dequantized weights compute.
    path = os.path.join(tmp_path, "float.tflite")
    export_tflite(path, model, 7, 6)
    runner = interpreter.Interpreter(model_path=path).get_signature_runner()
    ids = runner(source_ids=SOURCE[:1].astype("int32"))["target_ids"]
    np.testing.assert_array_equal(
        ids, dequantized_copy(model).generate(SOURCE[:1], max_length=6))
