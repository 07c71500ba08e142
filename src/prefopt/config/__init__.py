"""Configuration: the typed schemas of every config group and the checks made before a run starts.

`schema` holds one dataclass per `conf/` group, registered in Hydra's ConfigStore, so a
misspelled key, a wrong type or an unknown choice fails when Hydra composes the config.
`checks` holds what the schemas cannot say (ranges, combinations of keys, group options typed
on the command line) and turns a `PrefoptError` into one line on stderr.
"""

from pathlib import Path


def config_dir() -> str:
    """`conf/`: inside the package in a wheel, at the repository's root in a checkout."""
    here = Path(__file__).resolve().parents[1]
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"prefopt's conf/ directory was found neither in {here} nor in {here.parents[1]}"
    )
