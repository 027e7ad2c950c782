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


def _probe_kernel(layer, kernel_shape, contracted):
    """The float kernel a quantized `Dense` / `EinsumDense` applies, read by
    calling it on one-hot rows (exactly representable after its int8
    activation quantization), minus its bias, without its activation."""
    import numpy as np
    from keras import ops

    size = int(np.prod(kernel_shape[:contracted]))
    inputs = np.eye(size, dtype="float32")
    if isinstance(layer, keras.layers.EinsumDense):
        # Our attention projections: "ab<contracted>,<contracted><out>->ab<out>".
        inputs = inputs.reshape((1, size) + tuple(kernel_shape[:contracted]))
    activation, layer.activation = layer.activation, None
    try:
        outputs = ops.convert_to_numpy(ops.cast(layer(inputs), "float32"))
    finally:
        layer.activation = activation
    if layer.bias is not None:
        outputs = outputs - ops.convert_to_numpy(ops.cast(layer.bias, "float32"))
    return outputs.reshape(kernel_shape)


def dequantized_copy(model, dtype=None):
    """A float copy of a model whose sublayers were `quantize`d (int8 or
    int4): same config with the unquantized policy, each quantized
    kernel/table replaced by what it computes. For exporters whose target
    has no kernels for Keras' quantized ops (TFLite's builtins take no
    int8 activations); they can re-quantize the float copy their own way.

    `dtype` (e.g. "float32") replaces the policy as well: a copy of a
    mixed-precision model (quantized or not) that computes in float32. Its
    variables are float32 already, so that loses nothing.
    """
    import numpy as np
    from keras import ops

    config = model.get_config()
    policy = model.dtype_policy
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        policy = policy.default_policy
    config["dtype"] = dtype or keras.dtype_policies.serialize(policy)
    for key in ("lora_rank", "lora_alpha", "lora_target_layer_names"):
        config.pop(key, None)
    copy = model.__class__.from_config(config)
    copy.build()
    values = {}
    for layer in model._flatten_layers():
        mode = layer.quantization_mode
        if mode is None or not layer.built:
            continue
        if mode not in ("int8", "int4"):
            raise ValueError(
                f"Cannot dequantize {layer.path} (quantized as {mode!r}); "
                "export a model quantized with 'int8' or 'int4'."
            )
        if isinstance(layer, keras.layers.Embedding):
            table = layer(np.arange(layer.input_dim, dtype="int32"))
            values[layer.path + "/embeddings"] = ops.convert_to_numpy(ops.cast(table, "float32"))
        else:
            float_twin = _layer_at(copy, layer.path, model.name)
            shape = tuple(float_twin.kernel.shape)
            contracted = 1
            if isinstance(layer, keras.layers.EinsumDense):
                inputs, output = layer.equation.replace(" ", "").split("->")
                contracted = len(set(inputs.split(",")[0]) - set(output))
            values[layer.path + "/kernel"] = _probe_kernel(layer, shape, contracted)
    model_variables = {v.path: v for v in model.variables}
    for variable in copy.variables:
        if variable.path in values:
            variable.assign(values[variable.path])
        elif variable.path in model_variables:
            variable.assign(model_variables[variable.path])
        elif "seed_generator" not in variable.path:  # dropout seeds: fresh
            raise ValueError(f"No value for {variable.path} in the quantized model.")
    return copy


def _layer_at(model, path, root_name):
    for layer in model._flatten_layers():
        if layer.path == path:
            return layer
    raise ValueError(f"No layer {path} in the float copy of {root_name}.")
