"""Test-suite setup: the backend, and the marker for TensorFlow-only tests.

One suite runs on all three Keras 3 backends. The backend is read from
`KERAS_BACKEND` (default `tensorflow`):

    KERAS_BACKEND=jax python -m pytest -q -m "not tensorflow_only"
    KERAS_BACKEND=torch python -m pytest -q -m "not tensorflow_only"

Tests of TensorFlow-only features (TF Text, `tf.data` pipelines, SavedModel,
TFLite, `tf.distribute`, the main job) carry the `tensorflow_only` marker
and are skipped, with the reason, on the other backends (the `-m` filter
above just deselects them instead of listing the skips). Mark a whole test
file with one line at module level:

    pytestmark = pytest.mark.tensorflow_only

or a single test with `@pytest.mark.tensorflow_only`. Everything unmarked
must pass unchanged on every backend.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402


def _let_numpy_read_torch_outputs():
    """Lets the tests' `np.asarray(layer(x))` / `np.testing.assert_*(...)`
    read torch tensors that carry autograd history, as they read TensorFlow
    and JAX arrays (torch refuses `numpy()` on them; Keras'
    `ops.convert_to_numpy` detaches first). Test-only: the package never
    relies on it."""
    import torch

    to_array = torch.Tensor.__array__

    def __array__(self, dtype=None, copy=None):
        tensor = self.detach().cpu()
        return to_array(tensor, dtype) if dtype is not None else to_array(tensor)

    torch.Tensor.__array__ = __array__


if os.environ["KERAS_BACKEND"] == "torch":
    _let_numpy_read_torch_outputs()


def pytest_collection_modifyitems(config, items):
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    skip = pytest.mark.skip(
        reason=f"tensorflow_only: a TensorFlow feature, not run on the {backend} backend"
    )
    for item in items:
        if item.get_closest_marker("tensorflow_only") is not None:
            item.add_marker(skip)
