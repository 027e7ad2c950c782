"""Across backends: imports, `.keras` files and outputs.

The subprocess tests start every backend themselves, so they run once,
from the TensorFlow suite (the CI's main job), not again from each
backend's suite.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "backends", "portable_model.py")

once = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="starts every backend in subprocesses: run once, from the TensorFlow suite",
)


def run_on(backend, *args):
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": ROOT,
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"{backend}: {done.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


IMPORTS = """
import json, sys
import keras_xformer as kx
before = "tensorflow" in sys.modules
layers = [kx.layers.TransformerEncoderBlock, kx.models.Transformer, kx.losses, kx.metrics,
          kx.schedules, kx.decoding.generate]
after_core = "tensorflow" in sys.modules
from keras_xformer.text import WordPieceTokenizer
lazy = {name: getattr(kx, name).__name__ for name in ("text", "datasets", "data", "export", "distribute")}
print("RESULT " + json.dumps({"before": before, "after_core": after_core, "lazy": lazy,
      "same": kx.text.WordPieceTokenizer is WordPieceTokenizer}))
"""


@once
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_import_pulls_in_no_tensorflow_and_subpackages_load_lazily(backend):
    result = run_on(backend, "-c", IMPORTS)
    assert result["before"] is False and result["after_core"] is False, result
    assert result["lazy"] == {n: f"keras_xformer.{n}" for n in
                              ("text", "datasets", "data", "export", "distribute")}
    assert result["same"]


def test_lazy_subpackages_and_bad_attribute():
    import keras_xformer as kx

    assert "text" in dir(kx)
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        kx.nonsense


def assert_same_outputs(got, expected, where):
    np.testing.assert_allclose(got["logits"], expected["logits"], atol=2e-4, err_msg=where)
    assert got["greedy"] == expected["greedy"], where
    assert got["beam"] == expected["beam"], where


@once
def test_keras_file_moves_between_backends_with_the_same_outputs(tmp_path):
    """Saved on TensorFlow, loaded on JAX and PyTorch (and saved there),
    loaded back on TensorFlow: the same logits and the same greedy and beam
    tokens everywhere, from the same weights."""
    tf_file, jax_file, torch_file = (str(tmp_path / f"{b}.keras") for b in ("tf", "jax", "torch"))
    saved = run_on("tensorflow", SCRIPT, "--save", tf_file)["models"]["tf.keras"]
    assert any(t != 0 for row in saved["greedy"] for t in row)
    on_jax = run_on("jax", SCRIPT, "--save-as", jax_file, tf_file)
    on_torch = run_on("torch", SCRIPT, "--save-as", torch_file, tf_file)
    back = run_on("tensorflow", SCRIPT, jax_file, torch_file)["models"]
    assert_same_outputs(on_jax["models"]["tf.keras"], saved, "TensorFlow -> JAX")
    assert_same_outputs(on_torch["models"]["tf.keras"], saved, "TensorFlow -> PyTorch")
    assert_same_outputs(back["jax.keras"], saved, "JAX -> TensorFlow")
    assert_same_outputs(back["torch.keras"], saved, "PyTorch -> TensorFlow")
