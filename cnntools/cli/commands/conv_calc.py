"""`cnntools conv-calc`: convolution arithmetic, by formula or by hand."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from cnntools.cli import options
from cnntools.output import emitter as output
from cnntools.calc.conv import LAYER_SPEC_HELP
from cnntools.core.errors import UsageError

LayerType = Literal["conv", "maxpool", "avgpool", "convtranspose"]
Activation = Literal["none", "relu"]


def main(
    in_size: Annotated[
        Optional[str], typer.Option("--in", metavar="SIZE", help="Formula mode: input size, N or HxW (e.g. 32 or 28x32).")
    ] = None,
    kernel: Annotated[
        Optional[list[str]],
        typer.Option(
            "--kernel", "-k", metavar="K|MATRIX",
            help="Formula mode: kernel size. Kernel mode: a kernel matrix (inline, file or -); repeat for several.",
        ),
    ] = None,
    stride: Annotated[
        Optional[int], typer.Option("--stride", "-s", metavar="N", help="Stride (default 1; pools: the kernel size).")
    ] = None,
    padding: Annotated[int, typer.Option("--padding", "-p", metavar="N", help="Zero padding on each side.")] = 0,
    dilation: Annotated[int, typer.Option("--dilation", "-d", metavar="N", help="Spacing between kernel taps.")] = 1,
    layer_type: Annotated[
        LayerType, typer.Option("--type", "-t", help="Formula mode: the single layer's kind.")
    ] = "conv",
    ceil_mode: Annotated[
        bool, typer.Option("--ceil-mode", help="Pools: round the output size up (PyTorch's ceil_mode).")
    ] = False,
    output_padding: Annotated[
        int, typer.Option("--output-padding", metavar="N", help="Transposed conv: extra size on one side.")
    ] = 0,
    in_channels: Annotated[
        Optional[int], typer.Option("--in-channels", metavar="N", help="Input channels (enables parameter counts).")
    ] = None,
    out_channels: Annotated[
        Optional[int], typer.Option("--out-channels", metavar="N", help="Single layer: output channels.")
    ] = None,
    layers: Annotated[
        Optional[str], typer.Option("--layers", metavar="SPEC", help="A chain of layers. " + LAYER_SPEC_HELP)
    ] = None,
    input_matrix: Annotated[
        Optional[str],
        typer.Option("--input", metavar="MATRIX", help="Kernel mode: the input matrix, inline ('1 0; 0 1'), a CSV/JSON file or -."),
    ] = None,
    bias: Annotated[
        Optional[list[float]],
        typer.Option("--bias", "-b", metavar="B", help="Kernel mode: one bias for every kernel, or one per kernel (repeat)."),
    ] = None,
    activation: Annotated[
        Activation, typer.Option("--activation", "-a", help="Kernel mode: activation after the bias.")
    ] = "none",
    explain: Annotated[
        bool, typer.Option("--explain", "-e", help="Kernel mode: show each output cell's multiply-add sum.")
    ] = False,
    fmt: options.Format = "table",
    quiet: options.Quiet = False,
    debug: options.Debug = False,
) -> None:
    """Conv/pool output sizes, or kernels applied by hand.

    Formula mode (no --input): the output size of one layer (--in, -k, -s, -p, -d, --type) or of
    a chain (--layers), layer by layer, with PyTorch's formula and the numbers filled in,
    parameter counts when channels are given, a warning when floor division drops input pixels
    and an error when a size stops being positive.

    Kernel mode (--input): cross-correlate each --kernel with the input matrix as PyTorch's
    conv2d does, add the bias, apply the activation. Matrices are inline ("1 0; 0 1": rows split
    by ';', values by spaces or commas), a CSV/JSON/text file, or - for stdin. --explain shows
    every output cell's multiply-add sum.

    \b
    Examples:
      cnntools conv-calc --in 32 -k 5                     # floor((32 - 5 + 2*0) / 1) + 1 = 28
      cnntools conv-calc --in 32 -k 5 -q                  # 28
      cnntools conv-calc --in 6 -k 3 -s 2 -p 1 --type maxpool --ceil-mode
      cnntools conv-calc --in 32 --in-channels 3 --layers "conv5-c6,maxpool2,conv5-c16,maxpool2"
      cnntools conv-calc --in 8 --layers "conv3-s2-p1-c16,convT4-s2-p1-c3"
      cnntools conv-calc --input "1 0 0 1 1 0; 0 1 0 0 0 1; 0 0 1 1 0 0; 1 0 0 0 1 0; 1 0 0 0 0 1" \\
          --kernel "1 0; 0 1" --kernel "1 0; 1 0" --kernel "1 1; 0 0" --bias -1 --activation relu --explain
    """
    output.configure(quiet=quiet, debug=debug)
    if input_matrix is not None:
        if in_size is not None or layers is not None:
            raise UsageError("--input (kernel mode) cannot be combined with --in or --layers (formula mode)")
        if layer_type != "conv" or ceil_mode or output_padding or in_channels is not None or out_channels is not None:
            raise UsageError(
                "--type, --ceil-mode, --output-padding and the channel options belong to formula mode (--in); "
                "kernel mode applies convolutions to one matrix"
            )
        _kernel_mode(input_matrix, kernel or [], bias or [], 1 if stride is None else stride, padding, dilation,
                     activation, explain, fmt, quiet)
        return
    if bias or explain or activation != "none":
        raise UsageError("--bias, --activation and --explain belong to kernel mode: give the matrix with --input")
    _formula_mode(in_size, kernel or [], stride, padding, dilation, layer_type, ceil_mode, output_padding,
                  in_channels, out_channels, layers, fmt, quiet)


def _shape_text(shape) -> str:
    c, h, w = shape
    return f"{c}x{h}x{w}" if c is not None else f"{h}x{w}"


def _formula_mode(in_size, kernel, stride, padding, dilation, layer_type, ceil_mode, output_padding,
                  in_channels, out_channels, layers, fmt, quiet) -> None:
    from cnntools.calc import conv

    if in_size is None:
        raise UsageError("give the input size with --in (e.g. --in 32), or a matrix with --input for kernel mode")
    height, width = conv.parse_size(in_size)
    if layers is not None:
        if kernel:
            raise UsageError("give either -k (one layer) or --layers (a chain), not both")
        single = (stride is not None, padding != 0, dilation != 1, layer_type != "conv", ceil_mode,
                  output_padding != 0, out_channels is not None)
        if any(single):
            raise UsageError(
                "-s, -p, -d, --type, --ceil-mode, --output-padding and --out-channels describe one layer; "
                "inside --layers write them per layer (e.g. 'conv3-s2-p1-c16,maxpool2-ceil')"
            )
        chain = conv.parse_layers(layers)
    else:
        if len(kernel) != 1:
            raise UsageError("formula mode needs one kernel size, e.g. -k 5 (or --layers for a chain)")
        try:
            k = int(kernel[0])
        except ValueError:
            raise UsageError(
                f"kernel size '{kernel[0]}' is not an integer (to apply a kernel matrix, give the input with --input)"
            ) from None
        pool = layer_type in ("maxpool", "avgpool")
        layer = conv.Layer(layer_type, k, stride if stride is not None else (k if pool else 1), padding,
                           dilation, output_padding, ceil_mode, out_channels)
        conv.validate(layer)
        chain = [layer]
    rows = conv.run_chain(height, width, chain, in_channels)

    for row in rows:
        sh, sw = row.steps
        axes = [("rows and columns", sh)] if sh.dropped == sw.dropped and sh.notes == sw.notes else [
            ("rows", sh), ("columns", sw)]
        for axis, step in axes:
            if step.dropped:
                output.warn(
                    f"layer {row.index} ({row.layer.describe()}): floor division leaves the last {step.dropped} "
                    f"input {axis} uncovered ({step.formula})"
                )
            for note in step.notes:
                output.info(f"layer {row.index}: {note}")

    final = rows[-1].out_shape
    final_text = str(final[1]) if final[1] == final[2] else f"{final[1]}x{final[2]}"
    if quiet and fmt == "table":
        output.write_data(f"{final_text}\n")
        return

    def formula_of(row) -> str:
        sh, sw = row.steps
        return sh.formula if sh.formula == sw.formula else f"H: {sh.formula}; W: {sw.formula}"

    table = [
        {
            "layer": row.index,
            "type": row.layer.describe(),
            "input": _shape_text(row.in_shape),
            "output": _shape_text(row.out_shape),
            "params": row.params,
            "formula": formula_of(row),
        }
        for row in rows
    ]
    known = [row.params for row in rows]
    total = sum(known) if all(p is not None for p in known) else None
    doc = {
        "input": {"channels": in_channels, "height": height, "width": width},
        "output": {"channels": final[0], "height": final[1], "width": final[2]},
        "output_size": final[1] if final[1] == final[2] else [final[1], final[2]],
        "total_params": total,
        "layers": [
            {
                "layer": row.index,
                "type": row.layer.kind,
                "kernel": row.layer.kernel,
                "stride": row.layer.stride,
                "padding": row.layer.padding,
                "dilation": row.layer.dilation,
                "output_padding": row.layer.output_padding,
                "ceil_mode": row.layer.ceil_mode,
                "in_channels": row.in_shape[0],
                "out_channels": row.out_shape[0],
                "in_height": row.in_shape[1],
                "in_width": row.in_shape[2],
                "out_height": row.out_shape[1],
                "out_width": row.out_shape[2],
                "params": row.params,
                "formula": formula_of(row),
                "dropped_rows": row.steps[0].dropped,
                "dropped_columns": row.steps[1].dropped,
            }
            for row in rows
        ],
    }
    csv_rows = doc["layers"]

    def render() -> None:
        columns = ["layer", "type", "input", "output", "params", "formula"]
        if all(r["params"] is None for r in table):
            columns.remove("params")
        output.print_table(table, columns)
        if total is not None and len(rows) > 1:
            output.write_data(f"total parameters: {total:,}\n")

    output.emit(doc, fmt, schema="conv-calc", rows=csv_rows, render_table=render)


def _kernel_mode(input_matrix, kernel_args, bias_args, stride, padding, dilation, activation, explain,
                 fmt, quiet) -> None:
    from cnntools.calc import kernel as km

    if not kernel_args:
        raise UsageError("kernel mode needs at least one --kernel matrix, e.g. --kernel '1 0; 0 1'")
    if sum(1 for a in [input_matrix, *kernel_args] if a == "-") > 1:
        raise UsageError("only one matrix can come from stdin (-)")
    matrix = km.load_matrix(input_matrix, "--input")
    kernels = [km.load_matrix(arg, f"--kernel {i}") for i, arg in enumerate(kernel_args, 1)]
    if len(bias_args) > 1 and len(bias_args) != len(kernels):
        raise UsageError(f"give one --bias for all kernels or one per kernel ({len(kernels)}), not {len(bias_args)}")
    biases = [km.plain_number(b) for b in bias_args] or [0]
    if len(biases) == 1:
        biases = biases * len(kernels)
    results = [
        km.apply_kernel(matrix, k, b, stride, padding, dilation, activation) for k, b in zip(kernels, biases)
    ]
    outputs = [km.values(cells) for cells in results]
    settings = f"stride {stride}, padding {padding}, dilation {dilation}, activation {activation}"

    if fmt == "json":
        doc = {
            "input": matrix,
            "kernels": kernels,
            "bias": biases,
            "stride": stride,
            "padding": padding,
            "dilation": dilation,
            "activation": activation,
            "outputs": outputs,
        }
        if explain:
            doc["explain"] = [
                [
                    {"row": c.row, "col": c.col, "terms": [[x, w] for x, w in c.terms], "bias": c.bias,
                     "pre_activation": c.pre_activation, "value": c.value}
                    for line in cells for c in line
                ]
                for cells in results
            ]
        output.print_json(doc, schema="conv-calc.kernel")
        return
    if fmt == "csv":
        rows = [
            {"kernel": i, "row": c.row, "col": c.col, "pre_activation": c.pre_activation, "value": c.value}
            for i, cells in enumerate(results, 1)
            for line in cells
            for c in line
        ]
        output.print_csv(rows)
        return
    stream = output.data_stream()
    blocks = []
    for i, (k, b, cells, out) in enumerate(zip(kernels, biases, results, outputs), 1):
        lines = []
        if not quiet:
            lines.append(
                f"kernel {i} ({len(k)}x{len(k[0])}), bias {km.fmt_number(b)}, {settings} -> "
                f"{len(out)}x{len(out[0])}"
            )
        if explain:
            lines.extend(km.explain_cell(c, activation) for line in cells for c in line)
            lines.append("")
        lines.extend(km.matrix_lines(out))
        blocks.append("\n".join(lines))
    if not quiet:
        header = [f"input ({len(matrix)}x{len(matrix[0])})", *km.matrix_lines(matrix)]
        blocks.insert(0, "\n".join(header))
    stream.write("\n\n".join(blocks) + "\n")
    stream.flush()
