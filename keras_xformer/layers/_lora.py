"""LoRA (Hu et al. 2021) on our composite layers and models, through Keras'
own `enable_lora` of `Dense`, `EinsumDense` and `Embedding`."""

import keras

from keras_xformer.layers._checks import check_positive_int

# The sublayers that get adapters by default: every attention projection,
# both feed-forward matrices, the token embeddings and an untied output
# projection (keras-hub's `Backbone.enable_lora` targets query and value
# only; `target_layer_names` narrows ours to that).
DEFAULT_LORA_TARGETS = (
    "query",
    "key",
    "value",
    "attention_output",
    "inner",
    "output",
    "token_embedding",
    "output_projection",
)
_LORA_KEYS = ("lora_rank", "lora_alpha", "lora_target_layer_names")


def enable_lora(layer, rank, lora_alpha=None, target_layer_names=None):
    """Freezes every weight inside `layer` and adds rank-`rank` adapters to
    its `Dense` / `EinsumDense` / `Embedding` sublayers named in
    `target_layer_names` (default `DEFAULT_LORA_TARGETS`). Returns the
    sublayers that got adapters."""
    check_positive_int("rank", rank)
    if not layer.built:
        raise ValueError(
            f"Build {layer.__class__.__name__} (call it once or `build()`) "
            "before `enable_lora`."
        )
    targets = tuple(target_layer_names or DEFAULT_LORA_TARGETS)
    lora_types = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding)
    chosen = [
        sublayer
        for sublayer in layer._flatten_layers(include_self=False)
        if isinstance(sublayer, lora_types) and sublayer.name in targets
    ]
    if not chosen:
        raise ValueError(
            f"No Dense, EinsumDense or Embedding sublayer named one of "
            f"{targets} in {layer.name}; choose `target_layer_names` among "
            f"{sorted({s.name for s in layer._flatten_layers() if isinstance(s, lora_types)})}."
        )
    # Only the adapters train: biases, norms and position tables freeze too.
    for variable in layer.variables:
        variable.trainable = False
    for sublayer in chosen:
        if not sublayer.lora_enabled:
            sublayer.enable_lora(rank, lora_alpha=lora_alpha)
    # Read back by `get_config`, so that `load_model` re-enables the adapters.
    layer._lora_config = {
        "lora_rank": rank,
        "lora_alpha": lora_alpha,
        "lora_target_layer_names": list(target_layer_names) if target_layer_names else None,
    }
    return chosen


class LoraMixin:
    """`enable_lora(rank)` for a composite layer; the adapters survive
    `get_config` / `load_model` (the saved kernels hold the merged
    `W + (alpha / rank) A B`, as Keras saves them, and the reloaded layer
    gets fresh zero adapters on top, frozen as before)."""

    def enable_lora(self, rank, lora_alpha=None, target_layer_names=None):
        """Adds LoRA adapters and freezes every other weight.

        Args:
            rank: the adapters' rank `r`.
            lora_alpha: scale numerator (`alpha / r`); default `rank`.
            target_layer_names: names of the `Dense` / `EinsumDense` /
                `Embedding` sublayers to adapt; default every attention
                projection (`query`, `key`, `value`, `attention_output`),
                the feed-forward `inner` and `output`, `token_embedding`
                and `output_projection`.

        Returns:
            The sublayers that got adapters.
        """
        return enable_lora(self, rank, lora_alpha, target_layer_names)

    def get_config(self):
        config = super().get_config()
        config.update(getattr(self, "_lora_config", None) or {})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        lora = {key: config.pop(key) for key in _LORA_KEYS if key in config}
        layer = super().from_config(config)
        if lora:
            layer._pending_lora = lora
        return layer

    def load_own_variables(self, store):
        # `load_model` builds the layer, then loads this layer's variables,
        # then its sublayers': re-adding the adapters here makes the
        # sublayers read the saved (merged) kernels under fresh adapters.
        restore_pending_lora(self)
        super().load_own_variables(store)


def restore_pending_lora(layer):
    """Re-enables LoRA recorded in a config, once the layer is built."""
    lora = getattr(layer, "_pending_lora", None)
    if lora and layer.built:
        layer._pending_lora = None
        layer.enable_lora(
            lora["lora_rank"],
            lora_alpha=lora.get("lora_alpha"),
            target_layer_names=lora.get("lora_target_layer_names"),
        )
