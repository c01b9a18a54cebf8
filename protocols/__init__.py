"""Protocols turn a manifest into one fold id per clip; splits derive from that column.

Registry: `PROTOCOLS` (a dict filled by `@register_protocol`), `create_protocol(name, **kw)`,
`list_protocols()`. Every protocol subclasses `Protocol` (`base.py`: the split scheme, the
defaults of `leaky`, `leak_reason`, `cross_validated`, `group_disjoint`, `reshufflable`, and a `repr` that shows
the config); `predefined.py`, `stratified.py` and `holdout.py` register theirs on import.
"""

from __future__ import annotations

import numpy as np

from . import holdout, predefined, stratified  # noqa: F401  (registers the protocols)
from .base import (
    PROTOCOLS,
    Protocol,
    ProtocolError,
    Split,
    create_protocol,
    list_protocols,
    make_splits,
    register_protocol,
)

__all__ = [
    "PROTOCOLS",
    "Protocol",
    "ProtocolError",
    "Split",
    "create_protocol",
    "list_protocols",
    "make_splits",
    "plan_splits",
    "register_protocol",
]


def plan_splits(protocol: Protocol, folds: np.ndarray, val: str = "next") -> list[Split]:
    """The protocol's splits: one per fold, or its own (fixed lists)."""
    return protocol.splits(folds, val)
