"""The domain registry: name -> plugin, from three sources, and the guess of a file's domain.

1. The four built-in domains (:data:`BUILTIN`), always, first and in this order.
2. Every ``unimae.domains`` entry point of the installed distributions (``pyproject.toml``)::

       [project.entry-points."unimae.domains"]
       sar = "my_package.sar:SARPlugin"

   The built-ins are declared there too; they are also found without any installation metadata (a source
   checkout on ``PYTHONPATH``, an editable install made before the group existed), so the table below and
   the metadata agree by construction and a duplicate of the same target is ignored.
3. Explicit :func:`register_domain` calls (a plugin class, usable as a decorator, or an instance).

Plugins are imported when first asked for (:func:`get_domain`, or :func:`domain_names` for all of them),
so ``import unimae.domains`` stays light. A third-party entry point that cannot be imported, or that does
not name a :class:`~unimae.domains.base.DomainPlugin`, is left out with a warning that names it; the
others keep working.

:func:`guess_domain` asks every plugin's :meth:`~unimae.domains.base.DomainPlugin.sniff` how sure it is
that a file is its own and takes the highest score (the earlier registered on a tie); a plugin raises
:class:`~unimae.core.errors.InputError` when a file it would claim cannot be read, and that message is
what the user sees when no plugin claims the file.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from unimae.core.errors import InputError, look_up
from unimae.domains.base import DomainPlugin
from unimae.domains.sniff import suffix

__all__ = [
    "ENTRY_POINT_GROUP",
    "BUILTIN",
    "register_domain",
    "unregister_domain",
    "get_domain",
    "domain_names",
    "guess_domain",
    "guess_domain_name",
]

ENTRY_POINT_GROUP = "unimae.domains"
#: the built-in domains, in tab order: ``(name, "module:attribute")`` as in ``pyproject.toml``'s entry points
BUILTIN: tuple[tuple[str, str], ...] = (
    ("ct", "unimae.domains.ct:CTPlugin"),
    ("fundus", "unimae.domains.fundus:FundusPlugin"),
    ("xray", "unimae.domains.xray:XRayPlugin"),
    ("multispectral", "unimae.domains.multispectral:MultispectralPlugin"),
)

# name -> a plugin class or instance (loaded); name -> (where it comes from, loader) (not yet imported)
_LOADED: dict[str, type[DomainPlugin] | DomainPlugin] = {}
_PENDING: dict[str, tuple[str, Callable[[], object]]] = {}
_ORDER: dict[str, None] = {}  # every known name, in registration order
_INSTANCES: dict[str, DomainPlugin] = {}
_DISCOVERED = False


def _import_target(target: str) -> Callable[[], object]:
    """A loader for ``"module:attribute"`` (the entry-point syntax), imported when called."""
    module, _, attr = target.partition(":")

    def load() -> object:
        obj: object = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
        return obj

    return load


def _discover() -> None:
    """Note the built-ins and the installed entry points (imported later, on first use)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    builtin = dict(BUILTIN)
    for name, target in BUILTIN:
        if name not in _LOADED:
            _PENDING.setdefault(name, (target, _import_target(target)))
            _ORDER.setdefault(name, None)
    try:
        found = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    except Exception as err:  # noqa: BLE001 - broken metadata of some distribution must not stop UniMAE
        warnings.warn(f"the {ENTRY_POINT_GROUP} entry points could not be read ({err}); using the built-in "
                      "domains only", stacklevel=3)  # fmt: skip
        found = []
    for ep in found:
        if builtin.get(ep.name) == ep.value:
            continue  # the built-in's own declaration
        if ep.name in _ORDER:
            warnings.warn(f"domain entry point {ep.name!r} ({ep.value}) ignored: a domain of that name is already "
                          "registered", stacklevel=3)  # fmt: skip
            continue
        _PENDING[ep.name] = (f"entry point {ep.name} = {ep.value}", ep.load)
        _ORDER[ep.name] = None


def _check(obj: object, name: str | None = None) -> type[DomainPlugin] | DomainPlugin:
    """``obj`` if it is a plugin class or instance (named ``name`` when given), else raise TypeError."""
    ok = isinstance(obj, DomainPlugin) or (isinstance(obj, type) and issubclass(obj, DomainPlugin))
    if not ok:
        raise TypeError(f"{obj!r} is not a DomainPlugin subclass or instance")
    plugin_name = getattr(obj, "name", None)
    if not isinstance(plugin_name, str) or not plugin_name:
        raise TypeError(f"{obj!r} has no domain name (set the class attribute `name`)")
    if name is not None and plugin_name != name:
        raise TypeError(f"it is named {plugin_name!r}, not {name!r}")
    return obj  # type: ignore[return-value]


def _load(name: str) -> bool:
    """Import a pending plugin; False (with a warning naming it) when it cannot be used."""
    where, loader = _PENDING.pop(name)
    try:
        _LOADED[name] = _check(loader(), name)
        return True
    except Exception as err:  # noqa: BLE001 - a broken third-party plugin must not stop the others
        _ORDER.pop(name, None)
        warnings.warn(f"domain plugin {name!r} ({where}) could not be loaded and is left out: "
                      f"{type(err).__name__}: {err}", stacklevel=3)  # fmt: skip
        return False


def register_domain(plugin: type[DomainPlugin] | DomainPlugin) -> type[DomainPlugin] | DomainPlugin:
    """Register a plugin class or instance under its ``name``; returns it, so it works as a class decorator.

    Registering the same class (or instance) again does nothing; another plugin under a taken name raises
    :class:`ValueError` (use :func:`unregister_domain` first to replace one).
    """
    _discover()
    _check(plugin)
    name = plugin.name
    if name in _PENDING:
        _load(name)  # a declared plugin of that name: compare with what it really is
    current = _LOADED.get(name)
    if current is not None and current is not plugin:
        raise ValueError(f"domain {name!r} is already registered by {_describe(current)}")
    _LOADED[name] = plugin
    _ORDER.setdefault(name, None)
    return plugin


def _describe(obj: object) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def unregister_domain(name: str) -> None:
    """Forget the domain ``name`` (a test's toy domain, or one to be replaced); unknown names are ignored."""
    _discover()
    _LOADED.pop(name, None)
    _PENDING.pop(name, None)
    _ORDER.pop(name, None)
    _INSTANCES.pop(name, None)


def domain_names() -> list[str]:
    """Every usable domain, built-ins first; imports the plugins not imported yet (broken ones are left out)."""
    _discover()
    for name in list(_ORDER):
        if name in _PENDING:
            _load(name)
    return list(_ORDER)


def get_domain(name: str) -> DomainPlugin:
    """The plugin registered as ``name`` (one instance per name); an unknown name lists the known ones."""
    _discover()
    name = str(name)
    if name in _PENDING:
        _load(name)
    if name not in _LOADED:
        look_up(name, domain_names(), what="domain")
    hit = _INSTANCES.get(name)
    if hit is None:
        obj = _LOADED[name]
        hit = obj() if isinstance(obj, type) else obj
        _INSTANCES[name] = hit
    return hit


def guess_domain(path: str | Path) -> DomainPlugin:
    """The plugin whose :meth:`~unimae.domains.base.DomainPlugin.sniff` scores ``path`` highest.

    Raises:
        InputError: a missing file; a file no plugin claims (the reason a plugin gave for a file it would
            have claimed but cannot read, e.g. a broken DICOM, else the accepted extensions).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError("file not found", p)
    best: DomainPlugin | None = None
    best_score = 0.0
    reason: InputError | None = None
    for name in domain_names():
        plugin = get_domain(name)
        try:
            score = float(plugin.sniff(p))
        except InputError as err:
            reason = reason or err
            continue
        if score > best_score:
            best, best_score = plugin, score
    if best is not None:
        return best
    if reason is not None:
        raise reason
    plugins = [get_domain(n) for n in domain_names()]
    exts = list(dict.fromkeys(e for plugin in plugins for e in plugin.extensions))
    folders = [plugin.folder_input for plugin in plugins if plugin.folder_input]
    what = "folder" if p.is_dir() else f"{suffix(p) or 'extension-less'} file"
    also = f", or {' or '.join(folders)}" if folders else ""
    raise InputError(f"cannot guess the domain of a {what}; supported: {', '.join(exts)}{also} (or name the "
                     "domain explicitly)", p)  # fmt: skip


def guess_domain_name(path: str | Path) -> str:
    """The name of :func:`guess_domain`'s plugin (``unimae info`` without ``--domain``, predict's input check)."""
    return guess_domain(path).name
