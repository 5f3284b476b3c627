"""The process entry point (`cnntools.cli.app.run`) skips interpreter teardown after the command,
but never at the cost of what a normal exit does: atexit handlers run, buffered output
reaches its file, the exit status is the command's, and live threads are waited for."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(tmp_path, body: str, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "entry.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)


def test_atexit_handlers_run_and_buffered_output_is_complete(tmp_path):
    marker = tmp_path / "marker"
    out = tmp_path / "out.txt"
    proc = _run(tmp_path, f"""
        import atexit, sys
        atexit.register(lambda: open({str(marker)!r}, "w").write("ran"))
        sys.stdout = open({str(out)!r}, "w", buffering=1 << 20)  # nothing written until flushed
        sys.argv = ["cnntools", "conv-calc", "--in", "224", "-k", "3", "-s", "1", "-p", "1", "--format", "json"]
        from cnntools.cli.app import run
        run()
        print("not reached", file=sys.stderr)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "not reached" not in proc.stderr
    assert marker.read_text() == "ran"
    import json

    assert json.loads(out.read_text())  # the whole document, flushed before the exit


def test_exit_status_and_message_are_the_commands(tmp_path):
    usage = _run(tmp_path, """
        import sys
        sys.argv = ["cnntools", "conv-calc", "--in", "-3"]
        from cnntools.cli.app import run
        run()
    """)
    assert usage.returncode == 2
    assert usage.stderr.strip()
    missing = _run(tmp_path, """
        import sys
        sys.argv = ["cnntools", "info", "no-such-file.safetensors"]
        from cnntools.cli.app import run
        run()
    """)
    assert missing.returncode == 1
    assert "no-such-file.safetensors" in missing.stderr


def test_a_live_thread_is_waited_for(tmp_path):
    marker = tmp_path / "thread"
    proc = _run(tmp_path, f"""
        import sys, threading, time
        def late():
            time.sleep(0.5)
            open({str(marker)!r}, "w").write("done")
        threading.Thread(target=late).start()
        sys.argv = ["cnntools", "--version"]
        from cnntools.cli.app import run
        run()
    """)
    assert proc.returncode == 0, proc.stderr
    assert marker.read_text() == "done"


def test_a_profiler_still_reports(tmp_path):
    """`python -m cProfile -m cnntools ...` prints its table at interpreter exit."""
    proc = subprocess.run([sys.executable, "-m", "cProfile", "-s", "tottime", "-m", "cnntools", "conv-calc", "--in", "32",
                           "-k", "5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "function calls" in proc.stdout
