"""The one test harness every layer test uses."""

import os

import keras
import numpy as np
from keras.src import testing

RNG = np.random.default_rng(0)


def random_inputs(*shape, dtype="float32"):
    return RNG.standard_normal(shape).astype(dtype)


class LayerTestCase(testing.TestCase):
    """Keras' own harness plus the checks that matter for Transformers."""

    def run_keras_layer_test(self, layer_cls, init_kwargs, **kwargs):
        """Keras' conformance test: serialization, masking, mixed precision
        and (by default) a training step."""
        self.run_layer_test(layer_cls, init_kwargs=init_kwargs, **kwargs)

    def assert_model_roundtrip(self, model, inputs, atol=1e-6):
        """`.keras` save/load with `safe_mode=True` keeps the outputs."""
        expected = model.predict(inputs, verbose=0)
        path = os.path.join(self.get_temp_dir(), "model.keras")
        model.save(path)
        restored = keras.models.load_model(path, safe_mode=True)
        actual = restored.predict(inputs, verbose=0)
        for e, a in zip(keras.tree.flatten(expected), keras.tree.flatten(actual)):
            np.testing.assert_allclose(a, e, atol=atol, rtol=1e-5)
        return restored

    def assert_fits_with_xla(self, model, x, y, loss="mse", epochs=2):
        """`model.fit(..., jit_compile=True)` runs and the loss stays finite."""
        model.compile(optimizer="adam", loss=loss, jit_compile=True)
        history = model.fit(x, y, epochs=epochs, batch_size=len(y), verbose=0)
        losses = history.history["loss"]
        self.assertTrue(np.all(np.isfinite(losses)), losses)
        return losses

    def assert_half_precision_agrees(
        self, make_layer, call, policies=("mixed_float16", "mixed_bfloat16"),
        tolerances=None,
    ):
        """Outputs under mixed precision agree with float32 for the same
        weights (finite is not enough: wrong float16 kernels stay finite).

        `make_layer(dtype)` builds a layer; `call(layer)` runs it and returns
        one tensor.
        """
        tolerances = tolerances or {"mixed_float16": 2e-2, "mixed_bfloat16": 8e-2}
        reference_layer = make_layer("float32")
        reference = np.asarray(call(reference_layer), dtype="float32")
        scale = max(1.0, float(np.abs(reference).max()))
        for policy in policies:
            layer = make_layer(policy)
            call(layer)  # build
            layer.set_weights(reference_layer.get_weights())
            actual = np.asarray(
                keras.ops.convert_to_numpy(
                    keras.ops.cast(call(layer), "float32")
                )
            )
            self.assertTrue(np.all(np.isfinite(actual)), policy)
            error = np.abs(actual - reference).max() / scale
            self.assertLess(error, tolerances[policy], f"{policy}: {error}")
