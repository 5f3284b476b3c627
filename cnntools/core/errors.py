"""Errors and exit codes: a leaf that imports nothing of cnntools, so every layer can raise
without depending on the printer (`cnntools.output.emitter` turns them into one line)."""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class CnnError(Exception):
    """A known problem, reported as one `Error: ...` line and exit status 1 (`exit_code`)."""

    exit_code = EXIT_ERROR


class UsageError(CnnError):
    """Bad usage: an option value or a combination of options the command refuses itself
    (Click's own checks exit 2 as well). One `Error: ...` line, exit status 2."""

    exit_code = EXIT_USAGE


class Terminated(KeyboardInterrupt):
    """SIGTERM: unwinds like Ctrl-C (temporary files are removed), exits 143."""

    exit_code = EXIT_TERMINATED
