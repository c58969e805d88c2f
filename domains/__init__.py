"""The domain registry: name -> plugin (see :mod:`unimae.domains.registry`).

The four built-in domains are always there; third-party domains come from the ``unimae.domains`` entry-point
group or an explicit :func:`register_domain` call. An unknown name raises an error that lists the known ones.
"""

from __future__ import annotations

from unimae.domains import registry
from unimae.domains.base import DomainPlugin, Sample
from unimae.domains.registry import (
    ENTRY_POINT_GROUP,
    domain_names,
    get_domain,
    guess_domain,
    guess_domain_name,
    register_domain,
    unregister_domain,
)

register = register_domain  # the earlier name

# the registry's functions, under their names there (its BUILTIN table stays an implementation detail)
__all__ = ["DomainPlugin", "Sample", "register", *(name for name in registry.__all__ if name != "BUILTIN")]
