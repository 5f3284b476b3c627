"""`cnntools rf-calc`: receptive fields of layer stacks and of real models."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnntools.cli import options
from cnntools.output import emitter as output
from cnntools.cli.completion import complete_arch
from cnntools.core.errors import CnnError, UsageError


def main(
    kernel: Annotated[
        Optional[str], typer.Option("--kernel", "-k", metavar="K[,K...]", help="Kernel size, or a comma list (one per layer).")
    ] = None,
    stride: Annotated[
        Optional[str], typer.Option("--stride", "-s", metavar="S[,S...]", help="Stride or comma list (default 1; pools: the kernel).")
    ] = None,
    padding: Annotated[Optional[str], typer.Option("--padding", "-p", metavar="P[,P...]", help="Padding or comma list (default 0).")] = None,
    dilation: Annotated[
        Optional[str], typer.Option("--dilation", "-d", metavar="D[,D...]", help="Dilation or comma list (default 1).")
    ] = None,
    num_layers: options.Num = None,
    types: Annotated[
        Optional[str], typer.Option("--type", "-t", metavar="TYPE[,TYPE...]", help="Layer kinds: conv or pool, or a comma list (default conv).")
    ] = None,
    layers: Annotated[
        Optional[str],
        typer.Option("--layers", metavar="SPEC", help="A chain in conv-calc's syntax, e.g. 'conv3-p1,maxpool2,conv3-s2'."),
    ] = None,
    arch: Annotated[
        Optional[str],
        typer.Option("--arch", metavar="ARCH", autocompletion=complete_arch, help="Every conv/pool layer of a registered architecture, torchvision:NAME, timm:NAME, or your own FILE.py:NAME."),
    ] = None,
    arch_args: options.ArchArgs = None,
    input_size: Annotated[
        Optional[int],
        typer.Option("--input-size", metavar="N", help="Input side in pixels: adds feature-map sizes (--arch default: the architecture's usual size; torchvision: its weights' crop size)."),
    ] = None,
    in_channels: Annotated[int, typer.Option("--in-channels", metavar="N", help="--arch: input channels.")] = 3,
    fmt: options.Format = "table",
    quiet: options.Quiet = False,
    debug: options.Debug = False,
) -> None:
    """Receptive field, jump and start, layer by layer.

    Follows Araujo et al., "Computing Receptive Fields of Convolutional Neural Networks"
    (Distill 2019). -k, -s, -p and -d take one value (repeated -n times) or a comma list with
    one value per layer; --type says which layers are conv and which pool (pools default to
    stride = kernel). receptive_field is in input pixels; jump is the distance in input pixels
    between neighbouring units; start is the input coordinate of the first unit's
    receptive-field edge (negative: it reaches into the padding), center its centre.
    --arch NAME reads the layers of a registered architecture (or torchvision:NAME) from the
    model's own graph; where residual branches meet, the larger field counts. Its answer is
    the field of the last feature map: pixels, or `global` where a global pooling, attention
    or gating makes every unit see the whole input (the local field, ignoring gating
    branches, is given beside it); a graph it cannot follow is refused, naming the node.

    \b
    Examples:
      cnntools rf-calc -k 3 -s 1 -n 3            # three 3x3 convs: 7
      cnntools rf-calc -k 4 -s 2 -n 2 -q         # 10
      cnntools rf-calc -k 3,2,3,2 -p 1,0,1,0 --type conv,pool,conv,pool --input-size 32
      cnntools rf-calc -k 3 -d 1,2,4 --format json
      cnntools rf-calc --layers "conv5,maxpool2,conv5,maxpool2"
      cnntools rf-calc --arch resnet18 --input-size 32
      cnntools rf-calc --arch torchvision:efficientnet_b0 --format json
      cnntools rf-calc --arch examples/mynet.py:MyNet --arch-args width=16
    """
    output.configure(quiet=quiet, debug=debug)
    from cnntools.calc import rf

    chosen = [name for name, value in (("-k", kernel), ("--layers", layers), ("--arch", arch)) if value is not None]
    if len(chosen) != 1:
        raise UsageError(
            "give the layers one way: -k (with -s/-p/-d/-n), --layers or --arch"
            + (f" (got {' and '.join(chosen)})" if chosen else "")
        )
    if input_size is not None and input_size < 1:
        raise UsageError(f"--input-size must be positive (got {input_size})")
    if arch is not None:
        _reject_stack_options(stride, padding, dilation, num_layers, types)
        from cnntools.models.user_code import parse_arch_args

        _emit_arch(arch, *_analyse_arch(arch, input_size, in_channels, parse_arch_args(arch_args)), fmt, quiet)
        return
    if layers is not None:
        _reject_stack_options(stride, padding, dilation, num_layers, types)
        rows = rf.receptive_fields(_layers_from_spec(layers), input_size)
    else:
        rows = rf.receptive_fields(rf.expand_layers(kernel, stride, padding, dilation, types, num_layers), input_size)

    final = rows[-1]["receptive_field"]
    if quiet and fmt == "table":
        output.write_data(f"{final}\n")
        return
    columns = ["layer", "type", "kernel", "stride", "padding", "dilation"]
    if any(row.get("size") is not None for row in rows):
        columns.append("size")
    columns += ["receptive_field", "jump", "start", "center"]
    doc = {"receptive_field": final, "input_size": input_size, "layers": rows}
    output.emit(
        doc, fmt, schema="rf-calc", rows=rows, columns=columns,
        render_table=lambda: output.print_table(
            [{**row, "center": _number_text(row["center"])} for row in rows], columns, numeric_text=("center",),
        ),
    )


def _emit_arch(arch: str, analysis, size: int, fmt: str, quiet: bool) -> None:
    """The field of the model's last feature map, then every layer that moves it."""
    from cnntools.calc.rf_graph import Unfollowed, Whole

    true, local = analysis.true, analysis.local
    if isinstance(true, Unfollowed):
        raise CnnError(f"{arch}: node {true.at}: {true.why}")
    summary = {"arch": arch, "input_size": size, "feature_map": analysis.feature_map}
    summary.update(_field_summary(true, size))
    summary["global_at"] = true.at if isinstance(true, Whole) else None
    summary["global_reason"] = true.why if isinstance(true, Whole) else None
    local_summary = _field_summary(local, size) if not isinstance(local, Unfollowed) else {"receptive_field": None}
    summary["local_receptive_field"] = local_summary["receptive_field"]
    summary["local_unfollowed"] = f"node {local.at}: {local.why}" if isinstance(local, Unfollowed) else None
    rows = analysis.rows
    final = summary["receptive_field"]
    if quiet and fmt == "table":
        print(_cell(final), file=output.data_stream())
        return
    columns = ["layer", "name", "type", "kernel", "stride", "padding", "dilation", "size", "receptive_field", "jump",
               "start", "center"]
    if any(row["local_receptive_field"] != row["receptive_field"] for row in rows):
        columns.append("local_receptive_field")
    text_rows = [{key: _cell(value) for key, value in row.items()} for row in rows]
    output.emit(
        {**summary, "layers": rows}, fmt, schema="rf-calc", rows=text_rows, columns=columns,
        render_table=lambda: (output.print_table(text_rows, columns), _say_summary(summary)),
    )


def _field_summary(extent, size: int) -> dict:
    from cnntools.calc.rf_graph import Whole

    if isinstance(extent, Whole):
        return {"receptive_field": "global", "jump": None, "start": None, "exceeds_input": False}
    h, w = extent
    pick = lambda a, b: a if a == b else [a, b]  # noqa: E731 - one number for square fields
    return {"receptive_field": pick(h.receptive_field, w.receptive_field), "jump": pick(h.jump, w.jump),
            "start": pick(h.as_dict()["start"], w.as_dict()["start"]),
            "exceeds_input": max(h.receptive_field, w.receptive_field) > size}


def _say_summary(summary: dict) -> None:
    """The answer in words, on stderr (the table above is the data)."""
    where = summary["feature_map"]
    if summary["receptive_field"] == "global":
        text = f"receptive field of {where}: global from {summary['global_at']} ({summary['global_reason']})"
    else:
        text = f"receptive field of {where}: {_cell(summary['receptive_field'])} px"
        if summary["exceeds_input"]:
            text += f" (larger than the {summary['input_size']}-pixel input: the centre units reach into the padding)"
    output.info(text)
    if summary["local_receptive_field"] != summary["receptive_field"]:
        local = summary["local_receptive_field"]
        output.info("local field, ignoring gating branches (squeeze-and-excitation, global context): "
                    + (f"{_cell(local)} px" if local is not None else f"not followed ({summary['local_unfollowed']})"))


def _cell(value):
    """[height, width] pairs as HxW for tables and CSV."""
    return "x".join(str(v) for v in value) if isinstance(value, list) else value


def _number_text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _reject_stack_options(*values) -> None:
    if any(v is not None for v in values):
        raise UsageError("-s, -p, -d, -n and --type go with -k; --layers and --arch carry their own")


def _layers_from_spec(spec: str) -> list[dict]:
    from cnntools.calc import conv

    result = []
    for layer in conv.parse_layers(spec):
        if layer.kind == "convtranspose":
            raise UsageError("rf-calc follows conv and pool layers; a transposed conv has no receptive field here")
        result.append(
            {"type": "conv" if layer.kind == "conv" else "pool", "kernel": layer.kernel, "stride": layer.stride,
             "padding": layer.padding, "dilation": layer.dilation}
        )
    return result


def _analyse_arch(arch: str, input_size: int | None, in_channels: int, arch_args: dict | None = None):
    from cnntools.calc import rf_graph

    if arch.startswith("torchvision:"):
        name = arch.split(":", 1)[1]
        if in_channels != 3:
            raise UsageError("torchvision models take 3 input channels")
        size = input_size or rf_graph.torchvision_default_size(name)
        model = rf_graph.build_torchvision(name, size)
    else:
        from cnntools.models import create_model, get_architecture

        entry = get_architecture(arch)  # one-line error naming the known ones
        size = input_size or entry.default_size
        try:
            model = create_model(arch, in_channels=in_channels, image_size=size, num_classes=10, arch_args=arch_args)
        except CnnError:
            raise
        except Exception as error:  # noqa: BLE001 - a size the architecture cannot take
            raise CnnError(f"cannot build {arch} for {in_channels}x{size}x{size} input ({error})") from None
    try:
        return rf_graph.analyse(model, size, in_channels), size
    except CnnError as error:
        raise CnnError(f"{arch}: {error}") from None
