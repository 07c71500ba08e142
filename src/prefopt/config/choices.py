"""The fixed values of the config's choice fields, as `str` Enums: OmegaConf refuses any other
value when it composes the config, naming the key and the valid values."""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """One of a config field's fixed values: equal to, hashed and printed as its string value
    (`str`, f-strings, JSON and MLflow params all see `cosine`, never `Scheduler.cosine`)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def values(cls) -> list[str]:
        return [member.value for member in cls]


class Attention(Choice):
    auto = "auto"
    sdpa = "sdpa"
    flex = "flex"
    flash_varlen = "flash_varlen"
    eager = "eager"


class ModelDtype(Choice):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class DataSource(Choice):
    toy = "toy"
    local = "local"
    hub = "hub"


class DataFormat(Choice):
    auto = "auto"
    explicit = "explicit"
    conversational = "conversational"
    implicit = "implicit"
    unpaired = "unpaired"


class OnInvalid(Choice):
    error = "error"
    skip = "skip"


class Scheduler(Choice):
    constant = "constant"
    linear = "linear"
    cosine = "cosine"


class TaskKind(Choice):
    align = "align"
    reward = "reward"


class LoopKind(Choice):
    offline = "offline"
    online = "online"


class PairSelection(Choice):
    best_vs_worst = "best_vs_worst"
    all_ranked = "all_ranked"


class KtoLabel(Choice):
    threshold = "threshold"
    median = "median"
