"""The ``delit`` command-line interface (a typer app)."""
