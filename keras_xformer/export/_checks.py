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


def check_positive_int(name, value):
    # bool is an int subclass: `batch_size=True` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int; received {value!r}.")


def check_beam_args(model, beam_size, length_penalty):
    """The beam settings `Transformer.generate` accepts, checked before a
    conversion that would otherwise fail minutes later, or not at all."""
    check_positive_int("beam_size", beam_size)
    if beam_size > model.target_vocabulary_size:
        raise ValueError(
            f"`beam_size`={beam_size} cannot exceed the target vocabulary size "
            f"({model.target_vocabulary_size})."
        )
    if (isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float))
            or not length_penalty >= 0):
        raise ValueError(
            f"`length_penalty` must be a number >= 0; received {length_penalty!r}."
        )
