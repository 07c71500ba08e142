"""`PythonJudge`: a plain function `(prompts, completions) -> rewards` as a judge.

`judge=python judge.function=my_module.my_reward`. Each prompt comes as the data wrote it: a
text, or for conversational data its list of {role, content} messages; the function is imported (and a missing
module or name reported in one line) when the config is checked, before the run starts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prefopt.config.targets import locate_target


class PythonJudge:
    name = "python"

    def __init__(self, function: str):
        self.function_name = function
        self.function: Callable[[list[str], list[str]], list[float]] = locate_target(
            "judge.function", function
        )
        self.name = f"python:{function}"

    def score(
        self, prompts: list[str], completions: list[str], device: torch.device | None = None
    ) -> list[float]:
        return list(self.function(list(prompts), list(completions)))
