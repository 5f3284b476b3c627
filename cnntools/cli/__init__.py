"""The command line: the Typer app (`app`), shared options, completion and its scripts, the
generated documents (`docs`), and one module per command under `commands/`.

`main` runs the command as a process (`python -m cnntools`; the console script is
`cnntools.cli.app:run`); the app is imported when it runs, so importing
`cnntools.cli.app.options` does not build the app.
"""


def main() -> None:
    """Run the `cnntools` command."""
    from cnntools.cli.app import run

    run()
