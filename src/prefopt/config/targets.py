"""The object a `_target_` node names, imported before the run starts, with a one-line error.

Hydra's own lookup (`hydra.utils.get_object`) logs a multi-line error before it raises; a
misspelled `_target_` is a user error and gets the usual one line instead.
"""

from __future__ import annotations

import importlib
from typing import Any

from prefopt.errors import PrefoptError


def locate_target(key: str, target: Any) -> Any:
    """The callable `target` (a dotted path) names; `key` is where it was given, for the error."""
    parts = str(target).split(".") if target else []
    for split in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for name in parts[split:]:
                found = getattr(found, name)
        except AttributeError:
            break
        if callable(found):
            return found
        break
    raise PrefoptError(
        f"{key}={target}: no class or function of that name can be imported; give its full "
        "dotted path, e.g. torch.optim.AdamW"
    )
