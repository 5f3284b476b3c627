"""`cnntools env`: the machine cnntools runs on, for a bug report."""

from __future__ import annotations

from cnntools.cli import options
from cnntools.output import emitter as output


def main(
    fmt: options.Format = "table",
    quiet: options.Quiet = False,
    debug: options.Debug = False,
) -> None:
    """Show versions, extras, devices, threads and the cache folder, for a bug report.

    Prints the versions of cnntools, Python, torch, torchvision and the other packages it
    runs on; which extras (timm, onnx, tensorboard) are installed; whether CUDA (each GPU,
    its memory, bf16) and Apple MPS are usable and whether the CPU computes bf16 natively;
    the device --device auto picks; the default of --threads and the cores this process may
    use; the cache folder, how many files cnntools keeps there and their size; and the
    environment variables cnntools reads that are set. Like `hf env` and
    `python -m torch.utils.collect_env`: paste it into an issue. The table's field names are
    the JSON document's keys joined by dots, and the CSV's columns.

    \b
    Examples:
      cnntools env
      cnntools env --format json | jq .devices
    """
    output.configure(quiet=quiet, debug=debug)
    from cnntools.inference.environment import describe_environment

    doc = describe_environment()
    flat = output.flatten(doc)
    output.emit(doc, fmt, schema="env", rows=[flat],
                render_table=lambda: output.print_table([{"field": k, "value": v} for k, v in flat.items()]))
