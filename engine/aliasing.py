"""Copies of a whole argument tuple that keep the aliasing among its values.

A model can tell aliased inputs from equal ones: ``nn.MultiheadAttention``
tests ``query is key`` and takes another path (a fused one, under
``no_grad``), an in-place op on one argument shows through another that
shares its storage.  So the engine's run, the native run and the eager
model must each get what the user's own ``module(*inputs)`` gets: one copy
per tensor however often it appears (the same object twice, inside a list
and as an argument), views of one storage as views of one copied storage,
a list or dict met twice as one copied list or dict.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def clone_value(value: Any) -> Any:
    """A deep copy of the tensors in ``value`` (an argument tuple, usually), aliasing kept."""
    return _Copier(value, None).copy(value)


def to_device(value: Any, device: str) -> Any:
    """``value`` with its tensors on ``device``, aliasing kept (tensors already there are not copied)."""
    return _Copier(value, device).copy(value)


def _strided(t: torch.Tensor) -> bool:
    """A plain dense tensor whose storage can be copied and viewed again."""
    return (t.layout == torch.strided and not t.is_quantized and not t.is_nested and t.device.type != "meta"
            and type(t) in (torch.Tensor, torch.nn.Parameter))


def _storage_key(t: torch.Tensor) -> tuple | None:
    if not _strided(t):
        return None
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    if storage.nbytes() == 0:
        return None
    return t.device.type, t.device.index, storage.data_ptr()


def _tensors(value: Any, seen: set[int]) -> list[torch.Tensor]:
    """Each tensor in ``value`` once (by identity), containers met twice walked once."""
    if isinstance(value, torch.Tensor):
        if id(value) in seen:
            return []
        seen.add(id(value))
        return [value]
    if isinstance(value, (list, tuple, dict)):
        if id(value) in seen:
            return []
        seen.add(id(value))
        items = value.values() if isinstance(value, dict) else value
        return [t for v in items for t in _tensors(v, seen)]
    return []


class _Copier:
    def __init__(self, value: Any, device: str | None):
        self.device = device
        self.memo: dict[int, Any] = {}
        self.keep: list[Any] = []  # the originals, alive while the memo holds their ids
        # storages that more than one distinct tensor views: copied once, viewed again
        holders: dict[tuple, int] = {}
        for t in _tensors(value, set()):
            key = _storage_key(t)
            if key is not None:
                holders[key] = holders.get(key, 0) + 1
        self.shared = {key for key, n in holders.items() if n > 1}
        self.storages: dict[tuple, Any] = {}

    def copy(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self._memo(value, lambda: self._tensor(value))
        if isinstance(value, list):
            return self._memo(value, lambda: self._fill([], value))
        if isinstance(value, tuple):
            return tuple(self.copy(v) for v in value)
        if isinstance(value, dict):
            return self._memo(value, lambda: self._fill({}, value))
        return value

    def _memo(self, value: Any, make: Callable[[], Any]) -> Any:
        found = self.memo.get(id(value))
        if found is None:
            found = self.memo[id(value)] = make()
            self.keep.append(value)
        return found

    def _fill(self, out: list | dict, value: list | dict) -> list | dict:
        self.memo[id(value)] = out  # a list that holds itself
        self.keep.append(value)
        if isinstance(out, list):
            out.extend(self.copy(v) for v in value)
        else:
            out.update((k, self.copy(v)) for k, v in value.items())
        return out

    def _tensor(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in self.shared:
            return t.clone() if self.device is None else t.to(self.device)
        storage = self.storages.get(key)
        if storage is None:
            whole = torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage())
            whole = whole.clone() if self.device is None else whole.to(self.device, copy=True)
            storage = self.storages[key] = whole.untyped_storage()
        with torch.no_grad():
            out = torch.empty(0, dtype=t.dtype, device=storage.device).set_(
                storage, t.storage_offset(), t.size(), t.stride())
        if t.requires_grad:
            out.requires_grad_(True)
        return out
