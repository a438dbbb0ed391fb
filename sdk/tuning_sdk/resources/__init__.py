"""The API's resources. Each module loads when first used (`TuningClient.tunings` / `.files` / `.models` /
`.chat` / `.completions` / `.usage`), so importing one does not import the others."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .chat import Chat, ChatCompletions
    from .completions import Completions
    from .files import Files
    from .models import Models
    from .tunings import Tunings
    from .usage import UsageResource

__all__ = ["Chat", "ChatCompletions", "Completions", "Files", "Models", "Tunings", "UsageResource"]
_MODULES = {
    "Chat": ".chat",
    "ChatCompletions": ".chat",
    "Completions": ".completions",
    "Files": ".files",
    "Models": ".models",
    "Tunings": ".tunings",
    "UsageResource": ".usage",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULES[name], __name__), name)
