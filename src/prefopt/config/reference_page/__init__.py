"""The configuration reference page (docs/configuration.md), generated from the configs.

    python -m prefopt.config.reference_page > docs/configuration.md

`render()` composes the default run and each option of each config group with Hydra, and reads
the schemas' docstrings, so the page shows the values a run really composes; a test regenerates
it and fails when the committed page differs.
"""

from prefopt.config.reference_page.page import render

__all__ = ["render"]
