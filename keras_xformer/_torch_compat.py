"""A workaround for a `torch.compile` bug hit by `fit(jit_compile=True)`.

Keras' torch trainer compiles the train step with `torch.compile`. Its
graph breaks (Keras' `Layer.__call__` bookkeeping) make Dynamo compile the
nested functions of our blocks as frames of their own, once per block
instance; on each such recompilation, torch 2.13's Dynamo first computes a
human-readable reason, and for a guard on a closure variable
(`recompilation_reason_for_no_tensor_aliasing_guard` evaluates the guard's
source in the frame's locals, which lack the closure's cells) that raised
`KeyError: 'decoder_padding_mask'` and failed the whole step. The reason is
only used for logging, so here a failure to compute it yields no reason
instead of an exception. Applied once, on the torch backend only; a torch
without that function is left alone.
"""

import functools

_APPLIED = []


def patch_dynamo_recompilation_reasons():
    if _APPLIED:
        return
    _APPLIED.append(True)
    try:
        from torch._dynamo import guards
    except ImportError:
        return
    original = getattr(guards, "recompilation_reason_for_no_tensor_aliasing_guard", None)
    if original is None:
        return

    @functools.wraps(original)
    def reasons(guard_manager, scope):
        try:
            return original(guard_manager, scope)
        except (KeyError, NameError):
            return []

    guards.recompilation_reason_for_no_tensor_aliasing_guard = reasons
