"""What makes `quantize(...)` survive `get_config` / `load_model`."""

import keras


def dtype_policy_config(layer):
    """The serialized `dtype` of a composite layer's config.

    `Model.quantize` swaps the dtype policy of Keras' `Dense` /
    `EinsumDense` / `Embedding` sublayers, which our layers create in
    `build` with the parent's policy: reloaded, they would be rebuilt in
    float and fail to read the int8 weights. So when a sublayer is
    quantized, the parent's `dtype` becomes a `DTypePolicyMap` whose
    default is the parent's own policy and whose entries are the quantized
    sublayers' policies by path; the sublayers, created with the parent's
    policy, look their own path up (keras-hub's `Backbone` does the same).
    """
    policy = layer.dtype_policy
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        return keras.dtype_policies.serialize(policy)
    quantized = {
        sublayer.path: sublayer.dtype_policy
        for sublayer in layer._flatten_layers(include_self=False)
        if sublayer.quantization_mode is not None
    }
    if not quantized:
        return keras.dtype_policies.serialize(policy)
    policy_map = keras.dtype_policies.DTypePolicyMap(default_policy=policy)
    for path, sub_policy in quantized.items():
        policy_map[path] = sub_policy
    return keras.dtype_policies.serialize(policy_map)
