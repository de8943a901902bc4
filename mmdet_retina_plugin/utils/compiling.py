"""Whether dynamo is tracing the caller: code with caches or fast paths of its own then runs its
plain torch form, traced into the graph."""
import torch


def is_compiling() -> bool:
    """Whether dynamo is tracing the caller.

    ``torch.compiler.is_compiling`` appeared in torch 2.3 and ``torch._dynamo.is_compiling``
    may go; an install without either is taken as not compiling.
    """
    for owner in ('compiler', '_dynamo'):
        fn = getattr(getattr(torch, owner, None), 'is_compiling', None)
        if fn is not None:
            return bool(fn())
    return False
