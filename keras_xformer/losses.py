"""Losses for sequence-to-sequence training with padded targets."""

import keras
from keras import ops
from keras.src.backend import set_keras_mask

_register = keras.saving.register_keras_serializable(package="keras_xformer")


@_register
class MaskedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Token cross-entropy averaged over the non-padding tokens only.

    Label smoothing (Szegedy et al. 2016; the paper's `eps_ls = 0.1`)
    spreads `label_smoothing` of the target mass uniformly over all classes,
    as Keras' own losses do, but without building one-hot targets:
    `loss = logsumexp(z) - (1 - eps) z_y - (eps / V) sum_v z_v`.

    Args:
        from_logits: `y_pred` are logits (the `Transformer`'s output) rather
            than probabilities.
        label_smoothing: in `[0, 1)`.
        ignore_class: the padding id whose positions do not count.
        name, reduction, dtype: as for `keras.losses.Loss` (the reduction
            is a mean over the counted tokens).

    Example:

    >>> loss = MaskedSparseCategoricalCrossentropy(label_smoothing=0.1)
    >>> y_true = keras.ops.array([[5, 6, 0]])
    >>> float(loss(y_true, keras.ops.zeros((1, 3, 8)))) > 0
    True
    """

    def __init__(
        self,
        from_logits=True,
        label_smoothing=0.0,
        ignore_class=0,
        name="masked_sparse_categorical_crossentropy",
        reduction="mean_with_sample_weight",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                "`label_smoothing` must be in [0, 1). "
                f"Received: label_smoothing={label_smoothing}"
            )
        self.from_logits = from_logits
        self.label_smoothing = label_smoothing
        self.ignore_class = ignore_class

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        y_pred = ops.cast(y_pred, "float32")
        if not self.from_logits:
            y_pred = ops.log(ops.clip(y_pred, 1e-7, 1.0))
        safe_labels = ops.where(y_true < 0, 0, y_true)
        losses = _smoothed_cross_entropy(y_pred, safe_labels, self.label_smoothing)
        if self.ignore_class is not None:
            mask = ops.not_equal(y_true, self.ignore_class)
            losses = ops.where(mask, losses, 0.0)
            set_keras_mask(losses, mask)
        return losses

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing,
                "ignore_class": self.ignore_class,
            }
        )
        return config


def _smoothed_cross_entropy(logits, labels, smoothing):
    """Per-token `logsumexp(z) - (1 - eps) z_y - eps mean(z)`, with its
    gradient `softmax(z) - (1 - eps) onehot(y) - eps / V` written by hand.

    Left to automatic differentiation, the gather of `z_y` back-propagates
    as a scatter into a zero tensor of the logits' size and each reduction
    as a broadcast: on the (tokens, vocabulary) logits, the largest tensor
    of a training step, that made the loss cost more than the output
    layer's matmul (benchmarks/train.py, lever `autodiff_loss`).
    """
    if keras.backend.backend() == "torch":
        return _torch_cross_entropy().apply(logits, labels, float(smoothing))
    vocabulary_size = ops.shape(logits)[-1]

    @ops.custom_gradient
    def cross_entropy(logits):
        peak = ops.max(logits, axis=-1, keepdims=True)
        exps = ops.exp(logits - peak)
        total = ops.sum(exps, axis=-1, keepdims=True)
        true_logit = ops.take_along_axis(logits, ops.expand_dims(labels, -1), axis=-1)
        losses = ops.log(total) + peak - (1.0 - smoothing) * true_logit
        if smoothing:
            losses -= smoothing * ops.mean(logits, axis=-1, keepdims=True)

        def grad(*args, upstream=None):
            upstream = ops.expand_dims(args[0] if args else upstream, -1)
            gradient = exps * (upstream / total)
            if smoothing:
                gradient -= upstream * (smoothing / ops.cast(vocabulary_size, "float32"))
            return gradient - ops.one_hot(labels, vocabulary_size) * (
                (1.0 - smoothing) * upstream
            )

        return ops.squeeze(losses, -1), grad

    return cross_entropy(logits)


_TORCH_FUNCTION = []


def _torch_cross_entropy():
    """The same loss and gradient as a `torch.autograd.Function`.

    Keras' torch `custom_gradient` keeps the backward as a closure over
    forward tensors; under `torch.compile` (`jit_compile=True`) that closure
    saw tensors of another traced shape ("The size of tensor a (20) must
    match the size of tensor b (10)"). Tensors handed to
    `ctx.save_for_backward` are what torch's compiler tracks, so this form
    works in eager mode and compiled.
    """
    if _TORCH_FUNCTION:
        return _TORCH_FUNCTION[0]
    import torch

    class SmoothedCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, labels, smoothing):
            peak = logits.amax(dim=-1, keepdim=True)
            exps = torch.exp(logits - peak)
            total = exps.sum(dim=-1, keepdim=True)
            labels = labels.long().unsqueeze(-1)
            true_logit = torch.gather(logits, -1, labels)
            losses = torch.log(total) + peak - (1.0 - smoothing) * true_logit
            if smoothing:
                losses = losses - smoothing * logits.mean(dim=-1, keepdim=True)
            ctx.save_for_backward(exps, total, labels)
            ctx.smoothing = smoothing
            return losses.squeeze(-1)

        @staticmethod
        def backward(ctx, upstream):
            exps, total, labels = ctx.saved_tensors
            smoothing = ctx.smoothing
            upstream = upstream.unsqueeze(-1)
            gradient = exps * (upstream / total)
            if smoothing:
                gradient = gradient - upstream * (smoothing / exps.shape[-1])
            # scatter_add_ of one value per row, in place: no one-hot tensor.
            gradient.scatter_add_(-1, labels, -(1.0 - smoothing) * upstream)
            return gradient, None, None

    _TORCH_FUNCTION.append(SmoothedCrossEntropy)
    return SmoothedCrossEntropy
