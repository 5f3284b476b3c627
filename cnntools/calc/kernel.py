"""Apply small kernels to a small matrix by hand: cross-correlation + bias + activation.

Follows PyTorch's convention (`torch.nn.functional.conv2d(x, w) + b`, no kernel flip) in
plain Python, keeping every multiply-add term so a student can check each output cell.
Integers stay integers; any float in the input makes the arithmetic float.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from cnntools.output import files
from cnntools.calc.conv import output_length
from cnntools.core.errors import UsageError

Number = int | float
Matrix = list[list[Number]]


def _number(text: str, where: str) -> Number:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{where}: '{text}' is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"{where}: '{text}' is not a finite number")
    return value


def _rectangular(rows: list[list[Number]], where: str) -> Matrix:
    rows = [row for row in rows if row]
    if not rows:
        raise UsageError(f"{where}: the matrix is empty")
    widths = {len(row) for row in rows}
    if len(widths) != 1:
        raise UsageError(f"{where}: rows have different lengths ({', '.join(str(len(r)) for r in rows)})")
    return rows


def parse_matrix_text(text: str, where: str = "matrix") -> Matrix:
    """Rows split by `;` or newlines, values by spaces or commas (`"1 0 0 1; 0 1 0 0"`)."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise UsageError(f"{where}: not valid JSON ({error.msg} at line {error.lineno})") from None
        return matrix_from_json(data, where)
    rows = []
    for line in re.split(r"[;\n]", stripped):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rows.append([_number(v, where) for v in re.split(r"[\s,]+", line) if v])
    return _rectangular(rows, where)


def matrix_from_json(data, where: str = "matrix") -> Matrix:
    """A JSON list of lists of numbers (or {"matrix": ...}) as a matrix."""
    if isinstance(data, dict):
        for key in ("matrix", "input", "kernel", "data"):
            if key in data:
                data = data[key]
                break
    if (
        not isinstance(data, list)
        or not all(isinstance(row, list) for row in data)
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for row in data for v in row)
    ):
        raise UsageError(f"{where}: JSON must be a list of rows of numbers, e.g. [[1, 0], [0, 1]]")
    return _rectangular([list(row) for row in data], where)


def load_matrix(arg: str, what: str = "matrix") -> Matrix:
    """A matrix given inline, as a CSV/JSON/text file path, or `-` for stdin."""
    if arg == files.STDIO:
        return parse_matrix_text(files.read_text(arg), f"{what} (stdin)")
    looks_inline = not Path(arg).is_file() and (
        bool(re.search(r"[;\s,\[]", arg.strip())) or bool(re.fullmatch(r"[\d.eE+\-]+", arg))
    )
    if looks_inline:
        return parse_matrix_text(arg, what)
    if not Path(arg).exists():
        raise UsageError(f"{what} '{arg}' is neither a matrix like '1 0; 0 1' nor an existing file")
    return parse_matrix_text(files.read_text(arg), f"{what} {arg}")


@dataclass
class Cell:
    """One output cell: its products (input value, weight), the bias and the results."""

    row: int
    col: int
    terms: list[tuple[Number, Number]]
    bias: Number
    pre_activation: Number
    value: Number


MAX_TERMS = 10_000_000  # kernel mode is for matrices people can read; bounds time and memory


def apply_kernel(
    matrix: Matrix,
    kernel: Matrix,
    bias: Number = 0,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    activation: str = "none",
) -> list[list[Cell]]:
    """Cross-correlate `kernel` over zero-padded `matrix`, add `bias`, apply the activation."""
    if stride < 1 or dilation < 1 or padding < 0:
        raise UsageError("stride and dilation must be at least 1 and padding at least 0")
    if activation not in ("none", "relu"):
        raise UsageError(f"unknown activation '{activation}' (use none or relu)")
    rows, cols = len(matrix), len(matrix[0])
    krows, kcols = len(kernel), len(kernel[0])
    out_rows = output_length(rows, krows, stride, padding, dilation)
    out_cols = output_length(cols, kcols, stride, padding, dilation)
    if out_rows < 1 or out_cols < 1:
        raise UsageError(
            f"a {krows}x{kcols} kernel (dilation {dilation}) does not fit the {rows}x{cols} input "
            f"with padding {padding}; add padding or use a smaller kernel"
        )
    if out_rows * out_cols * krows * kcols > MAX_TERMS:
        raise UsageError(
            f"{out_rows}x{out_cols} output cells of {krows}x{kcols} products each is more than this hand "
            f"calculator does ({MAX_TERMS:,} multiply-adds); use smaller matrices or less padding"
        )

    def at(r: int, c: int) -> Number:
        r -= padding
        c -= padding
        return matrix[r][c] if 0 <= r < rows and 0 <= c < cols else 0

    out = []
    for i in range(out_rows):
        line = []
        for j in range(out_cols):
            terms = [
                (at(i * stride + a * dilation, j * stride + b * dilation), kernel[a][b])
                for a in range(krows)
                for b in range(kcols)
            ]
            total = sum(x * w for x, w in terms) + bias
            value = total if activation == "none" or total > 0 else type(total)(0)
            line.append(Cell(i, j, terms, bias, total, value))
        out.append(line)
    return out


def values(cells: list[list[Cell]]) -> Matrix:
    """The output matrix of `apply_kernel`."""
    return [[cell.value for cell in line] for line in cells]


def plain_number(value: Number) -> Number:
    """A whole float as an int (2.0 → 2); any other number unchanged."""
    return int(value) if float(value).is_integer() else value


def fmt_number(value: Number) -> str:
    """Integers as integers, floats with up to 6 significant digits (no float noise)."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value)) if value != 0 else "0"
        return f"{value:.6g}"
    return str(value)


def explain_cell(cell: Cell, activation: str) -> str:
    """`out[0,1] = 0*1 + 1*0 + 0*0 + 0*1 + (-1) = -1 -> relu 0` for one cell."""

    def paren(v: Number) -> str:
        text = fmt_number(v)
        return f"({text})" if text.startswith("-") else text

    products = " + ".join(f"{paren(x)}*{paren(w)}" for x, w in cell.terms)
    line = f"out[{cell.row},{cell.col}] = {products} + {paren(cell.bias)} = {fmt_number(cell.pre_activation)}"
    if activation == "relu":
        line += f" -> relu {fmt_number(cell.value)}"
    return line


def matrix_lines(matrix: Matrix) -> list[str]:
    """A matrix as right-aligned text rows."""
    texts = [[fmt_number(v) for v in row] for row in matrix]
    width = max(len(t) for row in texts for t in row)
    return ["  ".join(t.rjust(width) for t in row) for row in texts]
