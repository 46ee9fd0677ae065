"""Key store backends, by the name store.json records.

``file`` is :class:`~pipeline.keys.store.KeyStore` itself; any other backend is a subclass in its own module,
which registers it (:func:`register_backend`) and is imported by name the first time a store of that kind is
made or opened — so the base never imports its subclasses.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, TypeVar

from pipeline.errors import KeyStoreError

__all__ = ["BACKEND_MODULES", "backend_class", "register_backend"]

#: The module of each backend, by name.
BACKEND_MODULES = {"file": "pipeline.keys.store", "pkcs11": "pipeline.keys.pkcs11"}


class _Backend(Protocol):
    BACKEND: str


_BACKENDS: dict[str, type[Any]] = {}
_Registered = TypeVar("_Registered", bound="type[_Backend]")
_Base = TypeVar("_Base")


def register_backend(cls: _Registered) -> _Registered:
    """Class decorator: ``cls`` makes and opens the key stores whose backend is ``cls.BACKEND``."""
    if cls.BACKEND not in BACKEND_MODULES:
        raise ValueError(f"backend {cls.BACKEND!r} is not in backends.BACKEND_MODULES")
    _BACKENDS[cls.BACKEND] = cls
    return cls


def backend_class(name: str, base: type[_Base]) -> type[_Base]:
    """The key store class of backend ``name`` (``file``, ``pkcs11``), a subclass of ``base``, its module imported
    if need be."""
    if name not in BACKEND_MODULES:
        raise KeyStoreError(f"unknown key store backend {name!r} ({' or '.join(BACKEND_MODULES)})")
    if name not in _BACKENDS:
        importlib.import_module(BACKEND_MODULES[name])
    cls = _BACKENDS[name]
    if not issubclass(cls, base):  # pragma: no cover - every backend subclasses KeyStore
        raise TypeError(f"key store backend {name!r} is not a {base.__name__}")
    return cls
