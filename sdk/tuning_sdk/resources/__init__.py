from __future__ import annotations

from .files import Files
from .tunings import Tunings

__all__ = ["Files", "Tunings"]
