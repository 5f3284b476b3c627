"""Train runs written down as TOML: `train --config FILE.toml`, `--print-config`, and the
replay of a checkpoint's stored options (`train --config model.safetensors`). `lr-find` reads
and writes the same files: a key that only `train` takes (epochs, schedule, --history ...)
is skipped there, so one file describes the run and its learning-rate sweep.

A config file holds one key per `train` option, named like the flag (`batch-size = 64`;
`batch_size` is accepted too). It feeds Click's `default_map`, so an option given on the
command line always wins over the file and the file wins over the built-in defaults, and
`ctx.get_parameter_source` tells the three apart. Options that are actions rather than
settings (--config, --print-config, --dry-run, --list-archs, --resume, --quiet, --debug)
never appear in a config.
"""

from __future__ import annotations

import json
import math
from typing import Any

import typer

# Options that do something rather than describe the run.
NOT_SETTINGS = frozenset({"config", "print-config", "dry-run", "list-archs", "resume", "quiet", "debug", "help"})

CHECKPOINT_SUFFIX = ".safetensors"

# Per command, options that name what it writes rather than describe the run (lr-find's -o is a
# figure, train's a checkpoint): kept out of that command's config files.
OUTPUTS = {"lr-find": frozenset({"output", "format", "sweep"})}


def setting_params(command) -> dict[str, Any]:
    """{TOML key: Click parameter} of the command's settings, keyed by the long flag's name."""
    params = {}
    skip = NOT_SETTINGS | OUTPUTS.get(command.name, frozenset())
    for param in command.params:
        key = max(param.opts, key=len).lstrip("-")
        if param.param_type_name == "option" and key not in skip:
            params[key] = param
    return params


def read_values(path: str, ctx) -> dict[str, Any]:
    """{parameter name: value} from a TOML file or from a checkpoint's stored train options.

    Unknown keys and values of the wrong kind are refused with a one-line reason (a typo in a
    config must not silently fall back to a default)."""
    from cnntools.core.errors import CnnError

    params = setting_params(ctx.command)
    train_only = _train_settings(ctx) - set(params)
    if path.endswith(CHECKPOINT_SUFFIX):
        raw, source = _checkpoint_options(path), "checkpoint"
        # A checkpoint stores more than the flags (precision_used, channels, ...): keep the flags.
        raw = {k: v for k, v in raw.items() if k.replace("_", "-") in params and v not in (None, {}, [])}
        # Structured values (--arch-args) are stored parsed; their flag takes them as JSON text.
        raw = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in raw.items()}
    else:
        raw, source = _toml_values(path), "config"
    values = {}
    for key, value in raw.items():
        param = params.get(str(key).replace("_", "-"))
        if param is None and str(key).replace("_", "-") in train_only:
            continue  # a train setting the sweep has no use for
        if param is None:
            known = ", ".join(sorted(params))
            raise CnnError(f"{path}: unknown {source} key '{key}' ({ctx.command.name or 'train'} options: {known})")
        values[param.name] = _check_value(ctx, path, key, param, value)
    return values


def _train_settings(ctx) -> set[str]:
    """The TOML keys of `train` when `ctx` is another command of the same app (lr-find), else none."""
    if ctx.command.name == "train" or ctx.parent is None:
        return set()
    train = ctx.parent.command.get_command(ctx.parent, "train")
    return set(setting_params(train)) if train is not None else set()


def _toml_values(path: str) -> dict:
    import tomllib

    from cnntools.output import files
    from cnntools.core.errors import CnnError

    try:
        doc = tomllib.loads(files.read_text(path))
    except tomllib.TOMLDecodeError as error:
        raise CnnError(f"{files.display_name(path)}: not a valid TOML file ({error})") from None
    tables = [k for k, v in doc.items() if isinstance(v, dict)]
    if tables:
        raise CnnError(f"{path}: a train config is flat (key = value lines); [{tables[0]}] is a table")
    return doc


def _checkpoint_options(path: str) -> dict:
    from cnntools.checkpoint import read_checkpoint
    from cnntools.core.errors import CnnError

    _, meta = read_checkpoint(path)
    stored = meta.train_config
    if not isinstance(stored, dict) or not stored:
        raise CnnError(f"{path}: the checkpoint stores no training options to replay")
    return stored


def _check_value(ctx, path: str, key: str, param, value):
    from cnntools.core.errors import CnnError

    flag = max(param.opts, key=len)
    if isinstance(value, (list, dict)) or value is None:
        raise CnnError(f"{path}: {key} must be a single value ({flag} takes one)")
    if param.is_flag and not isinstance(value, bool):
        raise CnnError(f"{path}: {key} is a switch; write true or false")
    try:  # Click's own conversion: the same choices and number checks as on the command line
        return param.process_value(ctx, value)
    except typer.BadParameter as error:
        raise CnnError(f"{path}: {key} = {value!r}: {error.format_message()}") from None


def load_config(ctx, param, value: str | None):
    """Eager callback of `--config`: the file's values become the command's defaults."""
    if value is None or ctx.resilient_parsing:
        return value
    from cnntools.core.errors import CnnError

    try:
        values = read_values(value, ctx)
    except CnnError as error:
        raise typer.BadParameter(str(error), ctx=ctx, param=param) from None
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return value


def resolved_settings(ctx, resolve: dict[str, Any] | None = None) -> dict[str, Any]:
    """{TOML key: value} of this invocation's settings, after file, flags and `resolve`
    (values the command works out itself, e.g. the optimizer's default learning rate)."""
    settings = {}
    for key, param in setting_params(ctx.command).items():
        settings[key] = ctx.params.get(param.name)
    for name, value in (resolve or {}).items():
        settings[name.replace("_", "-")] = value
    return settings


def print_config(ctx, resolve: dict[str, Any] | None = None) -> None:
    """--print-config: this invocation's settings as TOML on stdout, for `--config`."""
    from cnntools import __version__
    from cnntools.output import emitter as output

    name = ctx.command.name or "train"
    header = f"cnntools {__version__} {name} options; run them with: cnntools {name} --config FILE.toml"
    output.data_stream().write(render_toml(resolved_settings(ctx, resolve), header))


def render_toml(settings: dict[str, Any], header: str) -> str:
    """A flat TOML document, one `key = value` per setting; unset (None) settings as comments."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for key, value in settings.items():
        lines.append(f"# {key} = (not set)" if value is None else f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def toml_value(value) -> str:
    """One TOML value: bool, int, float (inf/nan spelled TOML's way) or basic string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    # JSON's escapes are TOML's; DEL is the one control character JSON leaves raw.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
