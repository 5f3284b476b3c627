"""Loaded at start-up by the processes tests/test_distributed.py starts (their PYTHONPATH
begins with this folder): every file write through `cnntools.output.files.write_bytes` is logged
with the writer's RANK to the file named by CNNTOOLS_TEST_WRITE_LOG."""

import os

if os.environ.get("CNNTOOLS_TEST_WRITE_LOG"):
    import cnntools.output.files as _files

    _write_bytes = _files.write_bytes

    def _logged_write_bytes(path, data):
        with open(os.environ["CNNTOOLS_TEST_WRITE_LOG"], "a", encoding="utf-8") as log:
            log.write(f"{os.environ.get('RANK', '-')} {path}\n")
        return _write_bytes(path, data)

    _files.write_bytes = _logged_write_bytes
