"""conv-calc: formula mode against PyTorch's real layers, kernel mode against F.conv2d."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from cnntools.calc import conv, kernel as km
from cnntools.core.errors import CnnError

SPEC_INPUT = "1 0 0 1 1 0; 0 1 0 0 0 1; 0 0 1 1 0 0; 1 0 0 0 1 0; 1 0 0 0 0 1"
SPEC_KERNELS = ["1 0; 0 1", "1 0; 1 0", "1 1; 0 0"]
HYPO = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def kernel_args(*extra):
    args = ["conv-calc", "--input", SPEC_INPUT]
    for k in SPEC_KERNELS:
        args += ["--kernel", k]
    return args + ["--bias", "-1", "--activation", "relu", *extra]


# ---------------------------------------------------------------------------- SPEC §1.3


def test_spec_reference_stride_1(cli):
    result = cli(*kernel_args("--format", "json"))
    assert result.exit_code == 0, result.stderr
    outputs = result.json()["outputs"]
    assert outputs[0] == [[1, 0, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]]
    assert outputs[1] == [[0] * 5, [0] * 5, [0] * 5, [1, 0, 0, 0, 0]]
    assert outputs[2] == [[0, 0, 0, 1, 0], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]


def test_spec_reference_stride_2(cli):
    result = cli(*kernel_args("--stride", "2", "--format", "json"))
    assert result.exit_code == 0, result.stderr
    outputs = result.json()["outputs"]
    assert outputs == [[[1, 0, 1], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 1, 0]]]


def test_spec_reference_matches_torch():
    x = torch.tensor(km.parse_matrix_text(SPEC_INPUT), dtype=torch.float64)[None, None]
    w = torch.stack([torch.tensor(km.parse_matrix_text(k), dtype=torch.float64) for k in SPEC_KERNELS])[:, None]
    for stride in (1, 2):
        expected = F.relu(F.conv2d(x, w, stride=stride) - 1)[0]
        mine = [
            km.values(km.apply_kernel(km.parse_matrix_text(SPEC_INPUT), km.parse_matrix_text(k), -1, stride,
                                      activation="relu"))
            for k in SPEC_KERNELS
        ]
        assert torch.equal(torch.tensor(mine, dtype=torch.float64), expected)


def test_explain_shows_each_cell_arithmetic(cli):
    result = cli(*kernel_args("--stride", "2", "--explain"))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "out[0,0] = 1*1 + 0*0 + 0*0 + 1*1 + (-1) = 1 -> relu 1" in lines
    assert "out[1,1] = 1*1 + 1*1 + 0*0 + 0*0 + (-1) = 1 -> relu 1" in lines
    # 3 kernels x 6 cells explained.
    assert sum(line.startswith("out[") for line in lines) == 18


def test_explain_json_terms(cli):
    result = cli(*kernel_args("--stride", "2", "--explain", "--format", "json"))
    cells = result.json()["explain"][0]
    assert cells[0] == {"row": 0, "col": 0, "terms": [[1, 1], [0, 0], [0, 0], [1, 1]], "bias": -1,
                        "pre_activation": 1, "value": 1}


def test_kernel_mode_csv(cli):
    result = cli(*kernel_args("--stride", "2", "--format", "csv"))
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "kernel,row,col,pre_activation,value"
    assert len(lines) == 1 + 3 * 6
    assert "3,1,1,1,1" in lines


def test_matrices_from_files_and_stdin(cli, tmp_path):
    csv_file = tmp_path / "input.csv"
    csv_file.write_text("\n".join(",".join(r.split()) for r in SPEC_INPUT.split(";")) + "\n")
    json_file = tmp_path / "kernel.json"
    json_file.write_text(json.dumps([[1, 0], [0, 1]]))
    result = cli("conv-calc", "--input", str(csv_file), "--kernel", str(json_file), "-b", "-1", "-a", "relu",
                 "-s", "2", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["outputs"] == [[[1, 0, 1], [0, 0, 0]]]
    piped = cli("conv-calc", "--input", "-", "--kernel", "1 0; 0 1", "-b", "-1", "-a", "relu", "-s", "2",
                "--format", "json", input=SPEC_INPUT.replace(";", "\n"))
    assert piped.exit_code == 0, piped.stderr
    assert piped.json()["outputs"] == [[[1, 0, 1], [0, 0, 0]]]


def test_per_kernel_bias_and_floats(cli):
    result = cli("conv-calc", "--input", "1,2;3,4", "-k", "1", "-k", "0.5", "-b", "1", "-b", "-0.25", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["outputs"] == [[[2, 3], [4, 5]], [[0.25, 0.75], [1.25, 1.75]]]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "1 2; 3", "-k", "1"], "rows have different lengths"),
        (["--input", "1 x; 3 4", "-k", "1"], "not a number"),
        (["--input", "1 2; 3 4", "-k", "1 1 1; 1 1 1; 1 1 1"], "does not fit"),
        (["--input", "1 2; 3 4", "-k", "1", "-k", "2", "-b", "1", "-b", "2", "-b", "3"], "one per kernel"),
        (["--input", "1 2; 3 4"], "at least one --kernel"),
        (["--input", "no-such-file.csv", "-k", "1"], "neither a matrix"),
        (["--input", "-", "-k", "-"], "only one matrix"),
        (["--input", "1 2; 3 4", "-k", "1", "-s", "0"], "stride"),
        (["--input", "1 2; 3 4", "-k", "1", "--type", "maxpool"], "formula mode"),
        (["--input", "[[1, 2], [3]]", "-k", "1"], "different lengths"),
        (["--input", "[1, 2]", "-k", "1"], "list of rows"),
    ],
)
def test_kernel_mode_errors(cli, args, message):
    result = cli("conv-calc", *args)
    assert result.exit_code == 2  # bad option values: usage errors
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0]


# ---------------------------------------------------------------------------- formula mode


def test_single_layer_formula_and_quiet(cli):
    result = cli("conv-calc", "--in", "32", "-k", "5")
    assert result.exit_code == 0
    assert "floor((32 - 5 + 2*0) / 1) + 1 = 28" in result.stdout
    quiet = cli("conv-calc", "--in", "32", "-k", "5", "-q")
    assert quiet.stdout == "28\n"


def test_dropped_pixels_warning(cli):
    result = cli("conv-calc", "--in", "32", "-k", "4", "-s", "3")
    assert result.exit_code == 0
    assert "Warning:" in result.stderr and "last 1 input rows and columns" in result.stderr
    assert cli("conv-calc", "--in", "32", "-k", "4", "-s", "3", "-q").stderr == ""
    assert "Warning" not in cli("conv-calc", "--in", "32", "-k", "5").stderr


def test_non_positive_size_is_an_error(cli):
    result = cli("conv-calc", "--in", "4", "--layers", "conv3,conv3,conv3")
    assert result.exit_code == 2  # bad option values: usage errors
    assert result.stderr.startswith("Error: layer 2") and "non-positive" in result.stderr


def test_ceil_mode_drops_window_in_right_padding(cli):
    result = cli("conv-calc", "--in", "5", "-k", "2", "-p", "1", "--type", "maxpool", "--ceil-mode", "--format", "json")
    layer = result.json()["layers"][0]
    assert layer["out_height"] == 3 == nn.MaxPool2d(2, 2, 1, ceil_mode=True)(torch.zeros(1, 1, 5, 5)).shape[-1]
    assert "- 1 = 3" in layer["formula"]


def test_chain_shapes_and_parameters_match_torch(cli):
    result = cli("conv-calc", "--in", "32", "--in-channels", "3", "--layers",
                 "conv5-c6,maxpool2,conv5-c16,avgpool2,convT4-s2-p1-c8", "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    model = nn.Sequential(nn.Conv2d(3, 6, 5), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.AvgPool2d(2),
                          nn.ConvTranspose2d(16, 8, 4, 2, 1))
    x = torch.zeros(1, 3, 32, 32)
    for layer, module in zip(doc["layers"], model):
        x = module(x)
        assert [layer["out_channels"], layer["out_height"], layer["out_width"]] == list(x.shape[1:])
        assert layer["params"] == sum(p.numel() for p in module.parameters())
    assert doc["total_params"] == sum(p.numel() for p in model.parameters())
    assert doc["output"] == {"channels": 8, "height": 10, "width": 10}


def test_non_square_input_and_csv(cli):
    result = cli("conv-calc", "--in", "28x31", "-k", "3", "-s", "2", "--format", "csv")
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("layer,type,kernel,stride")
    assert ",28,31,13,15," in lines[1]
    assert cli("conv-calc", "--in", "28x31", "-k", "3", "-s", "2", "-q").stdout == "13x15\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--in", "32", "-k", "3", "--type", "avgpool", "-d", "2"], "no dilation"),
        (["--in", "32", "-k", "2", "--type", "maxpool", "-p", "2"], "more than half"),
        (["--in", "32", "--layers", "conv3-q4"], "cannot read 'q4'"),
        (["--in", "32", "--layers", "dense3"], "cannot read layer"),
        (["--in", "32", "-k", "3", "--output-padding", "1"], "transposed"),
        (["--in", "32", "--layers", "convT3-s2-op2"], "output padding"),
        (["--in", "0", "-k", "3"], "positive"),
        (["--in", "32", "-k", "3", "-s", "0"], "stride must be at least 1"),
        (["--in", "32", "-k", "3", "-k", "5"], "one kernel size"),
        (["--in", "32", "--layers", "conv3", "-s", "2"], "describe one layer"),
        (["-k", "3"], "--in"),
        (["--in", "32", "-k", "3", "--explain"], "kernel mode"),
    ],
)
def test_formula_mode_errors(cli, args, message):
    result = cli("conv-calc", *args)
    assert result.exit_code == 2  # bad option values: usage errors
    assert result.stderr.startswith("Error:") and message in result.stderr


# ---------------------------------------------------------------------------- properties

layer_params = st.fixed_dictionaries(
    {
        "size": st.integers(1, 40),
        "kernel": st.integers(1, 7),
        "stride": st.integers(1, 4),
        "padding": st.integers(0, 3),
        "dilation": st.integers(1, 3),
    }
)


def _torch_out(module, size):
    with torch.no_grad():
        return module(torch.zeros(1, 1, size, size)).shape[-1]


@HYPO
@given(p=layer_params)
def test_conv_size_equals_torch(p):
    layer = conv.Layer("conv", p["kernel"], p["stride"], p["padding"], p["dilation"])
    mine = conv.output_size(p["size"], layer).size
    module = nn.Conv2d(1, 1, p["kernel"], p["stride"], p["padding"], p["dilation"])
    if mine < 1:
        with pytest.raises(RuntimeError):
            _torch_out(module, p["size"])
    else:
        assert mine == _torch_out(module, p["size"])


@HYPO
@given(p=layer_params, ceil=st.booleans())
def test_maxpool_size_equals_torch(p, ceil):
    assume(p["padding"] <= p["kernel"] // 2)
    layer = conv.Layer("maxpool", p["kernel"], p["stride"], p["padding"], p["dilation"], ceil_mode=ceil)
    mine = conv.output_size(p["size"], layer).size
    assume(mine >= 1)
    module = nn.MaxPool2d(p["kernel"], p["stride"], p["padding"], p["dilation"], ceil_mode=ceil)
    assert mine == _torch_out(module, p["size"])


@HYPO
@given(p=layer_params, ceil=st.booleans(), include_pad=st.booleans())
def test_avgpool_size_equals_torch(p, ceil, include_pad):
    assume(p["padding"] <= p["kernel"] // 2)
    layer = conv.Layer("avgpool", p["kernel"], p["stride"], p["padding"], ceil_mode=ceil)
    mine = conv.output_size(p["size"], layer).size
    assume(mine >= 1)
    module = nn.AvgPool2d(p["kernel"], p["stride"], p["padding"], ceil_mode=ceil, count_include_pad=include_pad)
    assert mine == _torch_out(module, p["size"])


@HYPO
@given(p=layer_params, output_padding=st.integers(0, 3))
def test_conv_transpose_size_equals_torch(p, output_padding):
    assume(output_padding < max(p["stride"], p["dilation"]))
    layer = conv.Layer("convtranspose", p["kernel"], p["stride"], p["padding"], p["dilation"], output_padding)
    mine = conv.output_size(p["size"], layer).size
    assume(mine >= 1)
    module = nn.ConvTranspose2d(1, 1, p["kernel"], p["stride"], p["padding"], output_padding, dilation=p["dilation"])
    assert mine == _torch_out(module, p["size"])


@HYPO
@given(
    rows=st.integers(1, 7),
    cols=st.integers(1, 7),
    n_kernels=st.integers(1, 3),
    k=st.integers(1, 3),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    activation=st.sampled_from(["none", "relu"]),
    data=st.data(),
)
def test_kernel_mode_equals_conv2d(rows, cols, n_kernels, k, stride, padding, dilation, activation, data):
    ints = st.integers(-3, 3)
    matrix = data.draw(st.lists(st.lists(ints, min_size=cols, max_size=cols), min_size=rows, max_size=rows))
    kernels = [
        data.draw(st.lists(st.lists(ints, min_size=k, max_size=k), min_size=k, max_size=k)) for _ in range(n_kernels)
    ]
    biases = data.draw(st.lists(ints, min_size=n_kernels, max_size=n_kernels))
    x = torch.tensor(matrix, dtype=torch.float64)[None, None]
    w = torch.tensor(kernels, dtype=torch.float64)[:, None]
    b = torch.tensor(biases, dtype=torch.float64)
    if km.output_length(rows, k, stride, padding, dilation) < 1 or km.output_length(cols, k, stride, padding, dilation) < 1:
        with pytest.raises(CnnError):
            km.apply_kernel(matrix, kernels[0], biases[0], stride, padding, dilation, activation)
        return
    expected = F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation)
    if activation == "relu":
        expected = F.relu(expected)
    mine = [
        km.values(km.apply_kernel(matrix, kern, bias, stride, padding, dilation, activation))
        for kern, bias in zip(kernels, biases)
    ]
    assert torch.equal(torch.tensor(mine, dtype=torch.float64), expected[0])
