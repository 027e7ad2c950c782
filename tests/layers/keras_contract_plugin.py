"""pytest plugin: Keras' own `MultiHeadAttention` tests against ours.

Loaded with `-p tests.layers.keras_contract_plugin` before Keras' test
module is imported; that module looks `layers.MultiHeadAttention` up in
`keras.src.layers` at call time, so replacing the attribute there is
enough.
"""

import keras.src.layers

from keras_xformer.layers import MultiHeadAttention

keras.src.layers.MultiHeadAttention = MultiHeadAttention


def pytest_configure(config):
    # A marker Keras' own conftest (not installed with the wheel) declares.
    config.addinivalue_line("markers", "requires_trainable_backend: Keras' marker")


def pytest_report_header(config):
    return f"keras.src.layers.MultiHeadAttention -> {MultiHeadAttention.__module__}"
