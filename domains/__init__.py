"""The explicit domain registry: name -> plugin.

Registration is explicit (no auto-import): each built-in domain is listed here. Third-party code adds
a domain with :func:`register`. An unknown name raises an error that lists the known ones.
"""

from __future__ import annotations

from pathlib import Path

from unimae.core.errors import look_up
from unimae.domains.base import DomainPlugin, Sample

__all__ = ["DomainPlugin", "Sample", "register", "get_domain", "domain_names", "guess_domain"]

_REGISTRY: dict[str, type[DomainPlugin]] = {}
_INSTANCES: dict[str, DomainPlugin] = {}


def register(plugin_cls: type[DomainPlugin]) -> type[DomainPlugin]:
    """Register a plugin class under ``plugin_cls.name`` (usable as a decorator)."""
    name = plugin_cls.name
    if name in _REGISTRY and _REGISTRY[name] is not plugin_cls:
        raise ValueError(f"domain {name!r} is already registered by {_REGISTRY[name].__qualname__}")
    _REGISTRY[name] = plugin_cls
    return plugin_cls


def domain_names() -> list[str]:
    _ensure_builtins()
    return list(_REGISTRY)


def get_domain(name: str) -> DomainPlugin:
    """The plugin instance registered as ``name``; an unknown name lists the known ones."""
    _ensure_builtins()
    look_up(str(name), _REGISTRY, what="domain")
    if name not in _INSTANCES:
        _INSTANCES[name] = _REGISTRY[name]()
    return _INSTANCES[name]


def guess_domain(path: str | Path) -> DomainPlugin:
    """Guess the domain of a file from its extension and, where ambiguous, its content."""
    from unimae.domains.datasets import guess_domain_name

    return get_domain(guess_domain_name(path))


_BUILTINS_DONE = False


def _ensure_builtins() -> None:
    """Register the four built-in domains on first use (keeps ``import unimae.domains.base`` light)."""
    global _BUILTINS_DONE
    if _BUILTINS_DONE:
        return
    from unimae.domains.ct import CTPlugin
    from unimae.domains.fundus import FundusPlugin
    from unimae.domains.multispectral import MultispectralPlugin
    from unimae.domains.xray import XRayPlugin

    for cls in (CTPlugin, FundusPlugin, XRayPlugin, MultispectralPlugin):
        register(cls)
    _BUILTINS_DONE = True
