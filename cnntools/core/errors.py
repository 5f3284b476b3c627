"""Errors and exit codes: a leaf that imports nothing of cnntools, so every layer can raise
without depending on the printer (`cnntools.output.emitter` turns them into one line)."""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM

# What each status means, for the man pages' EXIT STATUS section.
EXIT_STATUS = {
    EXIT_OK: "Success.",
    EXIT_ERROR: "An error: one line on stderr starting with Error: (--debug adds the traceback).",
    EXIT_USAGE: "A usage error: an unknown option, a missing argument or a value out of range.",
    EXIT_INTERRUPTED: "Interrupted by Ctrl-C (SIGINT); no half-written output file is left.",
    EXIT_TERMINATED: "Terminated by SIGTERM; no half-written output file is left.",
}


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
