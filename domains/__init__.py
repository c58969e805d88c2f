"""The domain registry: name -> plugin (see :mod:`unimae.domains.registry`).

The four built-in domains are always there; third-party domains come from the ``unimae.domains`` entry-point
group or an explicit :func:`register_domain` call. An unknown name raises an error that lists the known ones.
"""

from __future__ import annotations

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

__all__ = [
    "DomainPlugin",
    "Sample",
    "ENTRY_POINT_GROUP",
    "register",
    "register_domain",
    "unregister_domain",
    "get_domain",
    "domain_names",
    "guess_domain",
    "guess_domain_name",
]
