"""Configuration: the typed schemas of every config group and the checks made before a run starts.

`schema` holds one dataclass per `conf/` group, registered in Hydra's ConfigStore, so a
misspelled key, a wrong type or an unknown choice fails when Hydra composes the config.
`checks` holds what the schemas cannot say (ranges, combinations of keys, group options typed
on the command line) and turns a `PrefoptError` into one line on stderr.
"""
