"""`python -m prefopt.sync`: upload a run's offline MLflow buffer (see `prefopt.tracking.sync`)."""

from prefopt.tracking.sync import main

if __name__ == "__main__":
    raise SystemExit(main())
