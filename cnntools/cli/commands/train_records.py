"""`train`'s records as they leave the run: the epoch table (or JSONL/CSV/JSON) on stdout and
the `--history` file. The records themselves come from the training loop."""

from __future__ import annotations

from cnntools.output import emitter as output

RECORD_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s", "updates"]
TEST_COLUMNS = ["test_loss", "test_acc"]  # with --test-each-epoch


def history_kind(path: str) -> str:
    if path == "-":
        raise output.CnnError("--history takes a file (.csv or .jsonl); for stdout use --format jsonl")
    if path.endswith(".csv"):
        return "csv"
    if path.endswith(".jsonl"):
        return "jsonl"
    raise output.CnnError(f"{path}: --history writes .csv or .jsonl files")


def record_columns(records: list[dict]) -> list[str]:
    """The epoch record's columns: test ones only when the run measured the test split."""
    return RECORD_COLUMNS + (TEST_COLUMNS if any("test_loss" in r for r in records) else [])


def write_history(path: str, records: list[dict], steps: list[dict] = ()) -> None:
    """Per-epoch records; a .jsonl file also gets the step records (`kind` step/val), in update order."""
    import json

    from cnntools.output import files

    if history_kind(path) == "csv":
        files.write_text(path, output.csv_text(records, record_columns(records)))
    else:
        lines = [(r.get("updates", 0), 1, r) for r in records] + [(r["updates"], 0, r) for r in steps]
        lines.sort(key=lambda item: (item[0], item[1]))
        files.write_text(path, "".join(json.dumps(output.to_jsonable(r)) + "\n" for _, _, r in lines))


class RecordPrinter:
    """Epoch records on stdout as they complete: a growing table, jsonl or csv; json at the end."""

    # The table fits 80 columns: one-space gutters, img/s for images_per_s (76 wide). With
    # --test-each-epoch the test columns take the place of seconds and updates (79 wide);
    # those stay in the CSV, JSONL and the checkpoint's history.
    WIDTHS = {"epoch": 5, "train_loss": 10, "train_acc": 9, "val_loss": 8, "val_acc": 7, "lr": 8, "seconds": 7,
              "images_per_s": 7, "updates": 7}
    TEST_WIDTHS = {"epoch": 5, "train_loss": 10, "train_acc": 9, "val_loss": 8, "val_acc": 7, "test_loss": 9,
                   "test_acc": 8, "lr": 8, "images_per_s": 7}
    HEADERS = {"images_per_s": "img/s"}

    def __init__(self, fmt: str, test: bool = False):
        self.fmt = fmt
        self.started = False
        self.widths = self.TEST_WIDTHS if test else self.WIDTHS
        self.columns = RECORD_COLUMNS + (TEST_COLUMNS if test else [])

    def add(self, record: dict, replay: bool = False) -> None:
        stream = output.data_stream()
        if self.fmt == "jsonl":
            if not replay:
                output.print_jsonl(record, schema="train.epoch")
            return
        if self.fmt == "json":
            return
        if self.fmt == "csv":
            text = output.csv_text([record], self.columns)
            stream.write(text if not self.started else text.split("\n", 1)[1])
        else:
            if not self.started:
                stream.write(" ".join(self.HEADERS.get(c, c).rjust(w) for c, w in self.widths.items()) + "\n")
            stream.write(" ".join(self._cell(record.get(c), c).rjust(w) for c, w in self.widths.items()) + "\n")
        stream.flush()
        self.started = True

    @staticmethod
    def _cell(value, column: str) -> str:
        if value is None:
            return "-"
        if column == "lr":
            return f"{value:.3g}"
        if column == "seconds":
            return f"{value:.1f}"
        if column == "images_per_s":
            return f"{value:.0f}"
        return output.format_cell(value)

    def finish(self, trainer) -> None:
        if self.fmt == "json":
            meta = trainer.metadata()
            output.print_json(
                {
                    "checkpoint": trainer.output,
                    "label": meta.label,
                    "arch": meta.arch,
                    "data": meta.data.to_json(),
                    "train_config": meta.train_config,
                    "metrics": meta.metrics,
                    "updates": trainer.position.updates,
                    "history": trainer.history,
                    "steps": trainer.steps,
                },
                schema="train",
            )
