"""Argument checks shared by the exporters."""

from keras_xformer.models import Transformer


def check_export_args(model, **lengths):
    if not isinstance(model, Transformer):
        raise ValueError(
            f"Expected a keras_xformer Transformer; received {type(model).__name__}."
        )
    for name, value in lengths.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"`{name}` must be a positive int; received {value!r}.")
    if model.positional == "learned" and model.max_length is not None:
        for name, value in lengths.items():
            if value > model.max_length:
                raise ValueError(
                    f"`{name}`={value} exceeds the model's learned position "
                    f"table (max_length={model.max_length})."
                )
    if not model.built:
        model.build()
