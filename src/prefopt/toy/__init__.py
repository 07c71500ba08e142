"""The embedded toy world: the offline default of `python -m prefopt.train`."""

from prefopt.toy.language import reward
from prefopt.toy.world import ToyWorld, build_toy_world

__all__ = ["ToyWorld", "build_toy_world", "reward"]
