"""The object a `_target_` node names, imported before the run starts, with a one-line error.

Hydra's own lookup (`hydra.utils.get_object`) logs a multi-line error before it raises; a
misspelled `_target_` is a user error and gets the usual one line instead. `check_target_node`
also checks the node's other keys against the arguments the object takes, so that
`+optim.optimizer.momentum=0.9` on AdamW fails at start rather than after the model loaded.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Mapping
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


HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
"""Keys of a `_target_` node that Hydra reads itself and never passes on."""


def check_target_node(key: str, node: Mapping[str, Any]) -> Any:
    """The callable `node._target_` names, once every other key of `node` (given at `key`) is
    an argument it takes; a callable that takes `**kwargs`, or whose signature Python cannot
    read, accepts any."""
    target = locate_target(f"{key}._target_", node.get("_target_"))
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return target
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return target
    takes = [p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for argument in node:
        if argument not in HYDRA_KEYS and argument not in takes:
            close = difflib.get_close_matches(str(argument), takes, n=1)
            hint = f"did you mean {key}.{close[0]}?" if close else f"it takes: {', '.join(takes)}"
            raise PrefoptError(
                f"{key}.{argument}: {node.get('_target_')} takes no argument {argument!r}; {hint}"
            )
    return target
