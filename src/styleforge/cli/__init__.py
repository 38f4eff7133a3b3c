"""The ``styleforge`` command line. Each subcommand lives in its own module with ``register`` and ``run``."""
