"""The API's resources. Each module loads when first used (`TuningClient.tunings` / `.files`), so importing
one does not import the other."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .files import Files
    from .tunings import Tunings

__all__ = ["Files", "Tunings"]
_MODULES = {"Files": ".files", "Tunings": ".tunings"}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULES[name], __name__), name)
