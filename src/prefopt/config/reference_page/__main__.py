"""`python -m prefopt.config.reference_page > docs/configuration.md`: print the page."""

import sys

from prefopt.config.reference_page import render

sys.stdout.write(render())
