"""The command line: the Typer app (`app`), shared options, completion and its scripts, the
generated documents (`docs`), and one module per command under `commands/`.

`main` is the console-script entry point (`cnntools.cli.app:main`); the app is imported when it
runs, so importing `cnntools.cli.app.options` does not build the app.
"""


def main() -> None:
    """Run the `cnntools` command."""
    from cnntools.cli.app import main as run

    run()
