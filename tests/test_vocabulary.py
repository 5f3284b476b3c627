"""One option vocabulary: every command's shared options are exactly the one definition in
options.py, a short flag means one thing everywhere, every command that runs a model takes the
same model-running options, and the spellings of earlier versions still work (with a note)."""

from __future__ import annotations

from collections import defaultdict

import pytest
import typer
import typer.main

from cnntools.cli import options
from cnntools.cli.app import app

# What every command that runs a model takes (train has no --split: it uses them all).
MODEL_OPTIONS = {"--device", "--precision", "--threads", "--batch-size", "--seed", "--data", "--data-dir", "--download", "--split"}


def _tree():
    return typer.main.get_command(app).commands


def _options(command):
    return [p for p in command.params if getattr(p, "param_type_name", "") == "option"]


def _long(param) -> str:
    return next(o for o in param.opts if o.startswith("--"))


def _signature(param) -> tuple:
    """What a user sees of an option: its flags, value type, metavar, help, flag-ness."""
    return (
        tuple(sorted(param.opts)), tuple(sorted(param.secondary_opts)), param.is_flag, param.multiple,
        param.metavar, param.help, str(param.bare_type()), param.min, param.max,
    )


def _definition_params(alias) -> list:
    """The Click parameter one Annotated alias of options.py turns into."""
    probe = typer.Typer()

    def command(value=None) -> None:
        pass

    command.__annotations__ = {"value": alias, "return": None}

    probe.command()(command)
    probe.command("other")(lambda: None)
    return _options(typer.main.get_command(probe).commands["command"])


def test_every_shared_option_is_its_one_definition():
    checked = defaultdict(set)
    for name, command in _tree().items():
        for param in _options(command):
            long = _long(param)
            if long not in options.VOCABULARY:
                continue
            allowed = [_signature(p) for alias in options.VOCABULARY[long] for p in _definition_params(alias)]
            assert _signature(param) in allowed, (
                f"{name} {long} differs from its definition in options.py: {_signature(param)} not in {allowed}"
            )
            checked[long].add(name)
    # The check is not vacuous: the shared options are shared.
    for long in ("--output", "--indices", "--num", "--top-k", "--image", "--save", "--seed", "--device", "--layer"):
        assert len(checked[long]) >= 2, (long, checked[long])


def test_a_short_flag_means_one_thing_everywhere():
    meaning = defaultdict(set)
    for name, command in _tree().items():
        for param in _options(command):
            for opt in param.opts:
                if not opt.startswith("--"):
                    meaning[opt].add(_long(param))
    clashes = {short: longs for short, longs in meaning.items() if len(longs) > 1}
    assert not clashes, clashes
    assert meaning["-k"] == {"--kernel"} and meaning["-o"] == {"--output"} and meaning["-i"] == {"--indices"}
    assert meaning["-n"] == {"--num"} and meaning["-l"] == {"--layer"}


def test_every_command_that_runs_a_model_takes_the_model_options():
    for name, command in _tree().items():
        longs = {_long(p) for p in _options(command)}
        if "--device" not in longs:
            continue
        # train and lr-find use the train split and carve validation from it.
        wanted = MODEL_OPTIONS - ({"--split"} if name in ("train", "lr-find") else set())
        assert wanted <= longs, f"{name} lacks {sorted(wanted - longs)}"
    assert {"tsne", "eval", "confusion", "saliency", "featmaps", "filters", "train"} <= {
        name for name, c in _tree().items() if "--device" in {_long(p) for p in _options(c)}
    }


def test_per_class_is_a_flag_and_image_takes_several_everywhere():
    for name, command in _tree().items():
        for param in _options(command):
            if _long(param) == "--per-class":
                assert param.is_flag, name
            if _long(param) == "--image":
                assert param.multiple, name


def test_deprecated_spellings_map_to_current_options_and_are_hidden():
    tree = _tree()
    for name, renames in options.DEPRECATED.items():
        flags = {opt for p in _options(tree[name]) for opt in (*p.opts, *p.secondary_opts)}
        for old, new in renames.items():
            assert new in flags, (name, new)
            assert old not in flags, f"{name} {old} is still a visible option"


def test_rewrite_keeps_values_and_notes_once(capsys):
    takes = {"--layer", "-l", "--output", "-o", "--num"}
    args = ["-k", "3", "--plot=x.png", "--layer", "-k", "--n", "5", "--", "--plot"]
    assert options.rewrite_deprecated("tsne", args, takes | {"--plot"}) == [
        "-k", "3", "--output=x.png", "--layer", "-k", "--num", "5", "--", "--plot"
    ]
    notes = capsys.readouterr().err.splitlines()
    assert notes == ["Note: --plot is deprecated; use --output (tsne).", "Note: --n is deprecated; use --num (tsne)."]
    assert options.rewrite_deprecated("filters", ["-k8", "-q"], takes) == ["--top-k=8", "-q"]
    assert capsys.readouterr().err == ""  # -q silences the note


@pytest.mark.parametrize(
    "old, new",
    [
        (["rf-calc", "-k", "3", "--num-layers", "3", "-q"], ["rf-calc", "-k", "3", "-n", "3", "-q"]),
        (["conv-calc", "-i", "1 0; 0 1", "-k", "1 0; 0 1"], ["conv-calc", "--input", "1 0; 0 1", "-k", "1 0; 0 1"]),
        (["rf-calc", "-l", "conv3,conv3", "--format", "json"], ["rf-calc", "--layers", "conv3,conv3", "--format", "json"]),
    ],
)
def test_old_spellings_run_as_before(cli, old, new):
    before, now = cli(*old), cli(*new)
    assert before.exit_code == now.exit_code == 0, before.stderr
    assert before.stdout == now.stdout
    if "-q" not in old:
        assert before.stderr.count("is deprecated") == 1 and now.stderr == ""


def test_the_readme_table_lists_the_vocabulary():
    from cnntools.cli.docs import REPO

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for long in options.VOCABULARY:
        assert f"`{long}" in readme, long


def test_image_folders_expand_to_their_images_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/2.png", "a.JPG", "b/1.jpeg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert options.expand_image_paths([str(tmp_path), "x.png"]) == [
        str(tmp_path / "a.JPG"), str(tmp_path / "b" / "1.jpeg"), str(tmp_path / "b" / "2.png"), "x.png"
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="no image files"):
        options.expand_image_paths([str(tmp_path / "empty")])
    # A folder after `--image a.png` belongs to --image, not to the models.
    assert options.split_image_files(["m.safetensors", str(tmp_path)], ["a.png"]) == (["m.safetensors"], ["a.png", str(tmp_path)])
