"""Type aliases shared by the package (in the spirit of ``redis.typing``)."""

from __future__ import annotations

from typing import Any, Dict, Tuple, Union

KeyT = Union[str, bytes]
KeyPartT = Any
CreationSourceT = Tuple[str, int]
ConnectionSettingsT = Dict[str, Any]
