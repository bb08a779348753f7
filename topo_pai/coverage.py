"""Weight tensors that masks do not cover.

Masks and topology cover the weights of Linear and Conv1d/Conv2d modules only. A
model may hold other weight tensors (of two or more dimensions): the
``in_proj_weight`` of attention, embeddings, learned scales. Their values take part
in ``model(x)``, but no mask prunes them and no path count sees them, so a reported
sparsity silently leaves them out. :func:`uncovered_weights` lists them and
:func:`warn_uncovered` says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from topo_pai.errors import UncoveredWeightsWarning
from topo_pai.graph.modules import param_name, prunable_modules, user_param_name


@dataclass(frozen=True)
class Uncovered:
    """Weight tensors no mask covers, and the share of the model's parameters they hold."""

    tensors: dict  # name -> number of elements
    total_params: int  # every parameter element of the model

    @property
    def n_params(self) -> int:
        return sum(self.tensors.values())

    @property
    def share(self) -> float:
        return self.n_params / self.total_params if self.total_params else 0.0

    def message(self, limit: int = 5) -> str:
        names = sorted(self.tensors, key=lambda k: (-self.tensors[k], k))
        listed = ", ".join(f"'{n}' ({self.tensors[n]:,})" for n in names[:limit])
        more = f" and {len(names) - limit} more" if len(names) > limit else ""
        return (f"{len(names)} weight tensor(s) hold {self.share:.1%} of the model's "
                f"parameters ({self.n_params:,} of {self.total_params:,}) but are not Linear or "
                f"Conv weights, so no mask covers them and the reported sparsity and topology "
                f"leave them out: {listed}{more}")


def uncovered_weights(model) -> Uncovered:
    """Parameters of two or more dimensions that are not the weight of a Linear or
    Conv1d/Conv2d module, with their element counts.

    Examples
    --------
    >>> import torch
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = torch.nn.Linear(4, 2)
    ...         self.pos = torch.nn.Parameter(torch.zeros(1, 4))
    ...     def forward(self, x):
    ...         return self.fc(x + self.pos)
    >>> u = uncovered_weights(Net())
    >>> u.tensors, round(u.share, 3)
    ({'pos': 4}, 0.286)
    """
    prunable = {param_name(name) for name in prunable_modules(model)}
    names: dict[int, list[str]] = {}  # every name of each tensor: a tied one has several
    params = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(user_param_name(name))
        params[id(p)] = p
    tensors, total = {}, 0
    for key, p in params.items():
        total += p.numel()
        # covered when any of its names is a prunable weight, whichever module comes first
        if p.dim() >= 2 and not any(n in prunable for n in names[key]):
            tensors[names[key][0]] = int(p.numel())
    return Uncovered(tensors, int(total))


def warn_uncovered(model, stacklevel: int = 3) -> Uncovered:
    """Issue an :class:`~topo_pai.errors.UncoveredWeightsWarning` naming the weight
    tensors no mask covers, if there are any; return them."""
    found = uncovered_weights(model)
    if found.tensors:
        warnings.warn(found.message(), UncoveredWeightsWarning, stacklevel=stacklevel)
    return found


__all__ = ["Uncovered", "uncovered_weights", "warn_uncovered"]
