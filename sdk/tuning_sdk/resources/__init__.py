from __future__ import annotations

from .tunings import Tunings

__all__ = ["Tunings"]
