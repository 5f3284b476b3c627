"""The JSON documents of env and cache: the machine cnntools runs on, and the files it keeps.

Fields as (path, type, meaning) in the notation of cnntools.schemas.
"""

from __future__ import annotations

_ENTRY = [
    ("file", "string", "the file's path"),
    ("kind", "string", "store (decoded images of one folder at one size), lock (its lock file) or partial (a build that was killed)"),
    ("bytes", "integer", "size on disk"),
    ("modified", "string", "last written, UTC, ISO 8601"),
    ("age_days", "number", "days since it was last written"),
]

DECLARED: dict[str, dict] = {
    "env": {
        "command": "env",
        "summary": "versions, extras, devices, threads and the cache folder, for a bug report. Table: one row per field (the dotted path); CSV: one row, the dotted paths as columns.",
        "fields": [
            ("cnntools", "string", "cnntools version"),
            ("python", "object", "the interpreter"),
            ("python.version", "string", "Python version"),
            ("python.implementation", "string", "CPython, PyPy, ..."),
            ("python.executable", "string", "the interpreter's path"),
            ("platform", "string", "operating system and machine"),
            ("packages", "object", "the packages cnntools runs on"),
            ("packages.*", "string|null", "a distribution's version (null: not installed)"),
            ("extras", "object", "pip extras: timm, onnx, tensorboard"),
            ("extras.*", "object", "one extra"),
            ("extras.*.installed", "boolean", "every package of the extra is installed"),
            ("extras.*.packages", "object", "its packages"),
            ("extras.*.packages.*", "string|null", "a distribution's version (null: not installed)"),
            ("devices", "object", "where a model can run"),
            ("devices.auto", "string|null", "the device --device auto picks (null: torch is not installed)"),
            ("devices.cuda", "object", "NVIDIA GPUs"),
            ("devices.cuda.available", "boolean", "torch can use CUDA"),
            ("devices.cuda.version", "string|null", "the CUDA version torch was built with (null: a CPU-only build)"),
            ("devices.cuda.devices[]", "object", "one per visible GPU"),
            ("devices.cuda.devices[].index", "integer", "cuda:N"),
            ("devices.cuda.devices[].name", "string", "the GPU's name"),
            ("devices.cuda.devices[].memory_bytes", "integer", "its memory"),
            ("devices.cuda.devices[].capability", "string", "compute capability"),
            ("devices.cuda.devices[].bf16", "boolean", "computes in bf16 (compute capability 8.0 or later)"),
            ("devices.mps", "object", "Apple GPUs"),
            ("devices.mps.available", "boolean", "torch can use MPS"),
            ("devices.cpu", "object", "the CPU"),
            ("devices.cpu.native_bf16", "boolean", "AMX or AVX512-BF16: --precision auto picks bf16 on the CPU"),
            ("threads", "object", "CPU threads"),
            ("threads.default", "integer", "the default of --threads"),
            ("threads.usable_cores", "integer", "cores this process may use (affinity and cgroup quota)"),
            ("threads.cpu_count", "integer|null", "cores in the machine"),
            ("threads.torch", "integer|null", "torch's thread count now (null: torch is not installed)"),
            ("cache", "object", "the cache folder"),
            ("cache.folder", "string|null", "where image stores are kept (null: CNNTOOLS_CACHE=off)"),
            ("cache.files", "integer", "files cnntools keeps there"),
            ("cache.bytes", "integer", "their size"),
            ("variables", "object", "the environment variables cnntools reads that are set"),
            ("variables.*", "string", "a variable's value"),
        ],
    },
    "cache": {
        "command": "cache",
        "summary": "the files cnntools keeps in its cache folder (cache list), oldest first; only cnntools' own files are listed.",
        "rows": "entries",
        "fields": [
            ("folder", "string|null", "the cache folder (null: CNNTOOLS_CACHE=off)"),
            ("bytes", "integer", "size of the files listed"),
            ("entries[]", "object", "one per file"),
            *((f"entries[].{path}", kind, meaning) for path, kind, meaning in _ENTRY),
        ],
    },
    "cache.clear": {
        "command": "cache",
        "summary": "what cache clear removed and what it left (a store being built, a partial file written in the last hour).",
        "rows": "removed",
        "fields": [
            ("folder", "string|null", "the cache folder (null: CNNTOOLS_CACHE=off)"),
            ("bytes_freed", "integer", "size of the files removed"),
            ("removed[]", "object", "one per file removed"),
            *((f"removed[].{path}", kind, meaning) for path, kind, meaning in _ENTRY),
            ("kept[]", "object", "one per file left in place"),
            *((f"kept[].{path}", kind, meaning) for path, kind, meaning in _ENTRY),
        ],
    },
}
