"""The user's own network: `--arch FILE.py:NAME` or `--arch package.module:NAME`.

NAME is an `nn.Module` subclass or a factory function returning one. It is called with
the `--arch-args` constructor arguments, plus `in_channels`, `num_classes` and
`image_size` where its signature names them.

A checkpoint of such a model refers to the code (the reference as given, the resolved
file path or module, the constructor arguments, the SHA-256 of the source file) and never
contains it. Loading the checkpoint runs that code, so it happens only when the user says
so (`--trust-code` or CNNTOOLS_TRUST_CODE=1), in the spirit of Hugging Face's
`trust_remote_code`. Code named on the command line (`train --arch`, `rf-calc --arch`) is
trusted: the user asked for it. The hash covers the named file only, not what it imports.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from cnntools.core.errors import CnnError, UsageError
from cnntools.output.emitter import warn

# Arguments the data decides, passed when the constructor's signature names them.
SIZE_ARGUMENTS = ("in_channels", "num_classes", "image_size")
TRUST_FLAG = "--trust-code (or CNNTOOLS_TRUST_CODE=1)"
_PREFIXES = ("timm:", "torchvision:")
_MODULE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class CodeReference:
    """Where a model's code lives, as stored in a checkpoint's `code` metadata entry."""

    reference: str  # as given: "examples/mynet.py:MyNet" or "mypkg.nets:make"
    kind: str  # "file" or "module"
    name: str  # the class or factory inside the file/module
    path: str | None = None  # file: the resolved absolute path; module: its source file
    path_given: str | None = None  # file: the path as given
    module: str | None = None  # module: the dotted module path
    sha256: str | None = None  # of the source file

    def record(self, args: dict) -> dict:
        """The checkpoint's `code` entry: this reference and the constructor arguments."""
        return {**asdict(self), "args": args}

    @property
    def where(self) -> str:
        return self.path_given if self.kind == "file" else self.module


def is_code_reference(spec: str) -> bool:
    """True for FILE.py:NAME and package.module:NAME (not a registered name, timm: or torchvision:)."""
    if not isinstance(spec, str) or ":" not in spec or spec.startswith(_PREFIXES):
        return False
    where, _, name = spec.rpartition(":")
    return bool(where) and bool(_NAME.match(name)) and (_is_file(where) or bool(_MODULE_PATH.match(where)))


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def parse_arch_args(text: str | None) -> dict:
    """--arch-args as a dict: a JSON object, or `key=value,key=value` (values read as JSON where they parse)."""
    if text is None or not text.strip():
        return {}
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise UsageError(f"--arch-args: not valid JSON ({error.msg} at character {error.pos})") from None
        if not isinstance(value, dict):
            raise UsageError("--arch-args: give a JSON object, e.g. '{\"width\": 32}'")
        return value
    args = {}
    for item in _split_items(text):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"--arch-args: '{item}' is not KEY=VALUE; write e.g. width=32,dropout=0.1 or a JSON object")
        try:
            args[key] = json.loads(raw)
        except json.JSONDecodeError:
            args[key] = raw.strip()
    return args


def _split_items(text: str) -> list[str]:
    """Split on commas outside brackets and quotes (so `sizes=[1,2]` stays one item)."""
    items, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item for item in items if item.strip()]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: Path, reference: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CnnError(f"{reference}: no file {path}") from None
    except IsADirectoryError:
        raise CnnError(f"{reference}: {path} is a folder, not a Python file") from None
    except OSError as error:
        raise CnnError(f"{reference}: cannot read {path} ({error.strerror or error})") from None


def resolve(reference: str) -> tuple[CodeReference, bytes | None]:
    """The reference of code named on the command line, resolved and hashed (imports a module's
    parents), and for a file the bytes that were hashed (what `build` compiles)."""
    where, _, name = reference.rpartition(":")
    if _is_file(where):
        path = Path(where).expanduser().resolve()
        if not where.endswith(".py"):
            raise CnnError(f"{reference}: name a Python file, e.g. mynet.py:MyNet")
        data = _read(path, reference)
        return CodeReference(reference, "file", name, path=str(path), path_given=where, sha256=_sha256(data)), data
    path = _module_source(where, reference)
    return CodeReference(reference, "module", name, path=str(path) if path else None, module=where,
                         sha256=_sha256(path.read_bytes()) if path else None), None


def _module_source(module: str, reference: str) -> Path | None:
    _allow_cwd_imports()
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as error:
        raise CnnError(f"{reference}: cannot find module {module} ({error})") from None
    if spec is None:
        raise CnnError(f"{reference}: no module named {module} (run from the folder that contains it, or install it)")
    origin = spec.origin
    return Path(origin).resolve() if origin and origin.endswith(".py") and os.path.isfile(origin) else None


def _allow_cwd_imports() -> None:
    # As `python -m` and uvicorn do: modules in the current folder import without installing.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def load_object(ref: CodeReference, data: bytes | None = None):
    """The class or factory `ref` names. A file is compiled from `data` (the bytes that were
    hashed) so what runs is what was checked."""
    if ref.kind == "file":
        path = Path(ref.path)
        data = data if data is not None else _read(path, ref.reference)
        module_name = f"cnntools_user_{_sha256(data)[:16]}_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}"
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # dataclasses and pickling look modules up here
            folder = str(path.parent)
            sys.path.insert(0, folder)  # so the file can import its neighbours, as `python FILE` can
            try:
                exec(compile(data, str(path), "exec"), module.__dict__)  # noqa: S102 - trusted user code
            except BaseException as error:
                sys.modules.pop(module_name, None)
                if isinstance(error, (KeyboardInterrupt, SystemExit)):
                    raise
                raise CnnError(f"{ref.reference}: running {ref.path_given} failed ({type(error).__name__}: {error})") from error
            finally:
                try:
                    sys.path.remove(folder)
                except ValueError:
                    pass
    else:
        _allow_cwd_imports()
        try:
            module = importlib.import_module(ref.module)
        except ImportError as error:
            raise CnnError(f"{ref.reference}: cannot import {ref.module} ({error})") from error
        except Exception as error:  # noqa: BLE001 - the user's module raised while importing
            raise CnnError(f"{ref.reference}: importing {ref.module} failed ({type(error).__name__}: {error})") from error
    obj = module
    for part in ref.name.split("."):
        if not hasattr(obj, part):
            found = sorted(n for n, v in vars(module).items() if not n.startswith("_") and _is_model_maker(v, module))
            hint = f"; it defines {', '.join(found)}" if found else ""
            raise CnnError(f"{ref.reference}: {ref.where} has no {ref.name}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CnnError(f"{ref.reference}: {ref.name} is a {type(obj).__name__}, not an nn.Module class or a function")
    return obj


def _is_model_maker(value, module) -> bool:
    """A class or function defined in `module` itself (what NAME can name), not an import."""
    return (inspect.isclass(value) or inspect.isfunction(value)) and getattr(value, "__module__", None) == module.__name__


def constructor_args(obj, args: dict, in_channels: int, image_size: int, num_classes: int) -> dict:
    """`args` plus the size arguments the constructor names and the user did not give."""
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        params = {}
    sizes = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size}
    extra = {k: v for k, v in sizes.items() if k in params and k not in args
             and params[k].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return {**args, **extra}


def build(ref: CodeReference, args: dict, in_channels: int, image_size: int, num_classes: int, data: bytes | None = None):
    """The user's model, built with `args` and the size arguments its signature names."""
    import torch.nn as nn

    from cnntools.models import no_inplace

    obj = load_object(ref, data)
    kwargs = constructor_args(obj, args, in_channels, image_size, num_classes)
    try:
        model = obj(**kwargs)
    except TypeError as error:
        raise CnnError(f"{ref.reference}: cannot call {ref.name}({_show(kwargs)}) ({error}); give its arguments with --arch-args") from error
    except Exception as error:  # noqa: BLE001 - the user's constructor raised
        raise CnnError(f"{ref.reference}: {ref.name}({_show(kwargs)}) failed ({type(error).__name__}: {error})") from error
    if not isinstance(model, nn.Module):
        raise CnnError(f"{ref.reference}: {ref.name}(...) returned a {type(model).__name__}, not a torch.nn.Module")
    return no_inplace(model)


def _show(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def from_record(record: dict, trust: bool, checkpoint: str) -> tuple[CodeReference, bytes | None]:
    """The code reference a checkpoint stores, checked: refused without `trust`; with it, a
    changed or missing source is reported (warned about, or an error when it is gone).

    Returns the reference and, for files, the bytes to compile (those that were hashed).
    """
    try:
        ref = CodeReference(**{k: record.get(k) for k in CodeReference.__dataclass_fields__})
    except TypeError:
        raise CnnError(f"{checkpoint}: malformed code reference in the metadata") from None
    if ref.kind not in ("file", "module") or not isinstance(ref.name, str) or not _NAME.match(ref.name):
        raise CnnError(f"{checkpoint}: malformed code reference in the metadata")
    if ref.kind == "file":
        path = _find_file(ref, checkpoint)
        data = _read(path, ref.reference) if path is not None else None
        changed = data is not None and ref.sha256 is not None and _sha256(data) != ref.sha256
        if not trust:
            what = f"{ref.path_given} ({ref.name})"
            if path is None:
                raise CnnError(f"{checkpoint}: the model is defined by code in {what}, which is not there "
                               f"(looked at {ref.path}); put the file back and pass {TRUST_FLAG} to run it")
            if changed:
                raise CnnError(f"{checkpoint}: the model's code {path} changed since training (SHA-256 "
                               f"{_sha256(data)[:12]}…, trained with {ref.sha256[:12]}…); it runs only with {TRUST_FLAG}")
            raise CnnError(f"{checkpoint}: the model is defined by code in {path} ({ref.name}); loading it runs "
                           f"that file — pass {TRUST_FLAG} if you trust it")
        if path is None:
            raise CnnError(f"{checkpoint}: the model's code {ref.path_given} is not there (looked at {ref.path}, "
                           f"and beside the checkpoint); put the file back")
        if changed:
            warn(f"{checkpoint}: {path} changed since the model was trained (SHA-256 {_sha256(data)[:12]}…, "
                 f"trained with {ref.sha256[:12]}…); running it because of --trust-code")
        return CodeReference(ref.reference, "file", ref.name, path=str(path), path_given=ref.path_given,
                             sha256=ref.sha256), data
    if not isinstance(ref.module, str) or not _MODULE_PATH.match(ref.module):
        raise CnnError(f"{checkpoint}: malformed code reference in the metadata")
    if not trust:  # finding a module's file imports its parent packages: nothing before trust
        raise CnnError(f"{checkpoint}: the model is defined by code in module {ref.module} ({ref.name}); loading "
                       f"it imports that module — pass {TRUST_FLAG} if you trust it")
    now, _ = resolve(f"{ref.module}:{ref.name}")
    if ref.sha256 and now.sha256 and now.sha256 != ref.sha256:
        warn(f"{checkpoint}: {now.path} (module {ref.module}) changed since the model was trained (SHA-256 "
             f"{now.sha256[:12]}…, trained with {ref.sha256[:12]}…); running it because of --trust-code")
    return ref, None


def _find_file(ref: CodeReference, checkpoint: str) -> Path | None:
    """The source file: where it was at training time, else as given from here, else beside the checkpoint."""
    candidates = [Path(ref.path)] if isinstance(ref.path, str) else []
    if isinstance(ref.path_given, str):
        candidates.append(Path(ref.path_given))
        if checkpoint not in ("-", "<stdin>"):
            candidates.append(Path(checkpoint).resolve().parent / Path(ref.path_given).name)
    for path in candidates:
        if path.is_file():
            return path.resolve()
    return None
