"""Count the tensor operations that force a device-to-host copy while some code runs.

On a GPU such an operation makes the host wait for every queued kernel: a value is copied back (``.item()``,
``bool(t)``, ``float(t)``, ``int(t)``, ``.tolist()``, ``.cpu()``, ``.numpy()``, formatting or printing), or the
size of the result depends on the data (``torch.nonzero``, indexing with a boolean mask, ``torch.unique``, …).
A :class:`torch.overrides.TorchFunctionMode` sees these calls on CPU tensors as well, so the count, and how it
grows with the iterations of a solver, is measured without a GPU.

Only the outermost call is counted: while the mode handles a call it is switched off, so ``print(t)``, which
copies every element, is one event, and so is ``float(t)``. ``.to(...)`` counts when the target device is given
as the string ``"cpu"``; a device taken from another tensor (``.to(device=x.device)``) is a copy to wherever
``x`` lives and is not counted, since on this machine every tensor is on the CPU and the two cannot be told
apart.

Example:
    >>> with SyncCounter() as syncs:
    ...     t = torch.ones(3)
    ...     _ = bool(t.any()), t.sum().item(), t[t > 0]
    >>> syncs.total, sorted(syncs.calls)
    (3, ['Tensor.__bool__', 'Tensor.__getitem__ (bool mask)', 'Tensor.item'])
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

_T = torch.Tensor

#: Calls that always copy a value to the host.
_ALWAYS: dict[Any, str] = {
    _T.item: "Tensor.item",
    _T.__bool__: "Tensor.__bool__",
    _T.__float__: "Tensor.__float__",
    _T.__int__: "Tensor.__int__",
    _T.__index__: "Tensor.__index__",
    _T.__complex__: "Tensor.__complex__",
    _T.__format__: "Tensor.__format__",
    _T.__repr__: "Tensor.__repr__",
    _T.__array__: "Tensor.__array__",
    _T.__contains__: "Tensor.__contains__",
    _T.tolist: "Tensor.tolist",
    _T.cpu: "Tensor.cpu",
    _T.numpy: "Tensor.numpy",
    _T.nonzero: "Tensor.nonzero",
    _T.masked_select: "Tensor.masked_select",
    _T.unique: "Tensor.unique",
    _T.unique_consecutive: "Tensor.unique_consecutive",
    _T.equal: "Tensor.equal",
    _T.allclose: "Tensor.allclose",
    _T.argwhere: "Tensor.argwhere",
    torch.nonzero: "torch.nonzero",
    torch.argwhere: "torch.argwhere",
    torch.masked_select: "torch.masked_select",
    torch.unique: "torch.unique",
    torch.unique_consecutive: "torch.unique_consecutive",
    torch.equal: "torch.equal",
    torch.allclose: "torch.allclose",
    torch.is_nonzero: "torch.is_nonzero",
    torch.bincount: "torch.bincount",
}
for _name in ("__str__",):  # Tensor may inherit it from object; count it only where torch defines it
    if _name in vars(_T):
        _ALWAYS[getattr(_T, _name)] = f"Tensor.{_name}"


def _has_bool_index(index: Any) -> bool:
    """Whether an indexing key holds a boolean tensor (whose number of ``True`` entries sizes the result)."""
    if isinstance(index, torch.Tensor):
        return index.dtype == torch.bool
    if isinstance(index, (tuple, list)):
        return any(_has_bool_index(i) for i in index)
    return False


def _is_cpu(device: Any) -> bool:
    return isinstance(device, str) and device.split(":")[0] == "cpu"


def _classify(func: Callable, args: tuple, kwargs: dict) -> str | None:
    """The name under which a call is counted, or ``None`` when it leaves every value on the device."""
    try:
        name = _ALWAYS.get(func)
    except TypeError:  # an unhashable callable
        name = None
    if name is not None:
        return name
    if func is _T.__getitem__ and len(args) > 1 and _has_bool_index(args[1]):
        return "Tensor.__getitem__ (bool mask)"
    if func is _T.__setitem__ and len(args) > 1 and _has_bool_index(args[1]):
        return "Tensor.__setitem__ (bool mask)"
    if func is torch.where and len(args) + len(kwargs) == 1:
        return "torch.where (condition only)"
    if func in (torch.repeat_interleave, _T.repeat_interleave):
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        if isinstance(repeats, torch.Tensor) and repeats.numel() > 1 and kwargs.get("output_size") is None:
            return "repeat_interleave (tensor repeats)"
    if func is _T.to and (any(_is_cpu(a) for a in args[1:]) or _is_cpu(kwargs.get("device"))):
        return 'Tensor.to("cpu")'
    return None


class SyncCounter(TorchFunctionMode):
    """A context in which every host-synchronising tensor call is counted by name (see the module docstring).

    Attributes:
        calls: ``Counter`` from the call's name (e.g. ``"Tensor.__bool__"``) to how often it ran.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _classify(func, args, kwargs)
        if name is not None:
            self.calls[name] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        """Number of synchronising calls counted so far."""
        return sum(self.calls.values())


def count_syncs(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, Counter[str], Any]:
    """Run ``fn(*args, **kwargs)`` and return ``(number of syncs, the calls by name, fn's result)``."""
    with SyncCounter() as counter:
        out = fn(*args, **kwargs)
    return counter.total, counter.calls, out


def sync_growth(run: Callable[[int], Any], n: int) -> tuple[int, int]:
    """``(syncs of run(n), syncs of run(2n))`` for ``run(iterations)``; their difference is what ``n`` more
    iterations cost."""
    first, _, _ = count_syncs(run, n)
    second, _, _ = count_syncs(run, 2 * n)
    return first, second
