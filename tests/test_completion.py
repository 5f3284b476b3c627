"""Value completion in real bash, zsh and fish with the scripts cnntools ships: the candidates
each shell offers (architectures, datasets, devices, checkpoints, and a checkpoint's layers
and classes read from its header without torch) and what a Tab inserts on a real command
line (no space after a folder or a prefix, a class name with a space kept one word). The zsh
and fish tests run where those shells are installed (.ci/run installs them)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnntools.cli import completion
from cnntools.cli import completion_scripts
from cnntools.cli.docs import REPO
from test_startup import HEAVY, run_wrapped

CLASSES = ["cat", "dog", "bull mastiff"]
SCRIPTS = {shell: REPO / completion_scripts.checkout_path(shell) for shell in completion_scripts.SHELLS}

# (line, check) per case: what every shell must offer for the line's last word.
CANDIDATES = [
    ("cnntools train --arch ", lambda c: {"lenet", "simple-cnn", "resnet18", "torchvision:", "timm:"} <= c),
    # One candidate per option: no piece of an option's wrapped help among them.
    ("cnntools train --ar", lambda c: c == {"--arch", "--arch-args"}),
    ("cnntools rf-calc --arch res", lambda c: c == {"resnet18", "resnet18-imagenet"}),
    # Model arguments: checkpoints and folders only, plus torchvision:
    ("cnntools eval ", lambda c: c == {"net.safetensors", "runs/", "torchvision:", "timm:"}),
    ("cnntools dataset-stats --data ", lambda c: {"digits", "cifar10", "fake", "runs/"} <= c and "notes.txt" not in c),
    ("cnntools eval net.safetensors --device ", lambda c: {"auto", "cpu", "cuda", "mps"} <= c),
    ("cnntools saliency net.safetensors --target ", lambda c: c == {"pred", "true", *CLASSES}),
    ("cnntools filters net.safetensors -l l", lambda c: c == {"last"}),
]


def layer_names(model) -> set[str]:
    return {name for name, m in model.named_modules() if name and any(True for _ in m.parameters(recurse=False))}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with a checkpoint, another file and a sub-folder; beside it a HOME and a
    `cnntools` on PATH that completes with this checkout and otherwise prints its arguments
    as JSON (so a test sees the words a Tab left on the line)."""
    from cnntools.checkpoint import save_checkpoint
    from cnntools.models import create_model

    base = tmp_path_factory.mktemp("complete")
    root = base / "work"  # where the shells run
    root.mkdir()
    model = create_model("lenet", 3, 32, len(CLASSES), batchnorm=True)
    meta = {
        "arch": {"arch": "lenet", "in_channels": 3, "image_size": 32, "num_classes": len(CLASSES), "batchnorm": True},
        "classes": CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 32, "in_channels": 3,
    }
    save_checkpoint(str(root / "net.safetensors"), model, meta)
    (root / "notes.txt").write_text("x")
    (root / "runs").mkdir()
    (root / "runs" / "only.safetensors").write_bytes(b"")
    (base / "home").mkdir()
    binary = base / "bin"
    binary.mkdir()
    script = binary / "cnntools"
    script.write_text(
        "#!/bin/sh\n"
        f'[ -n "$_CNNTOOLS_COMPLETE" ] && PYTHONPATH={REPO} exec {sys.executable} -m cnntools "$@"\n'
        f"exec {sys.executable} -c 'import json, sys; print(\"<<ARGS\", json.dumps(sys.argv[1:]), \"ARGS>>\")' \"$@\"\n"
    )
    script.chmod(0o755)
    return root, model


def shell_env(root: Path) -> dict:
    home = root.parent / "home"
    return {**os.environ, "PATH": f"{root.parent / 'bin'}:{os.environ['PATH']}", "HOME": str(home), "TERM": "xterm",
            "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".local"),
            "CUDA_VISIBLE_DEVICES": "0", "PYTHONPATH": str(REPO)}


def needs(shell: str):
    return pytest.mark.skipif(shutil.which(shell) is None, reason=f"{shell} not installed")


# -------------------------------------------------------------------------- candidates


def bash_candidates(root: Path, line: str) -> set[str]:
    """COMPREPLY of the shipped bash function for `line` (cursor at its end), unquoted."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    program = (
        f"source {SCRIPTS['bash']}\n"
        f"COMP_LINE={shlex.quote(line)}; COMP_POINT={len(line)}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        "_cnntools_completion cnntools 2>/dev/null\n"  # compopt complains outside a real Tab
        "printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], cwd=root, env=shell_env(root),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return {shlex.split(line)[0] for line in proc.stdout.splitlines() if line}


# Drives an interactive zsh through zsh/zpty: compinit, the shipped script, and a compadd that
# reports every candidate the completion system keeps; `<done>` ends each Tab.
ZSH_CAPTURE = r"""
zmodload zsh/zpty || exit 2
zpty z zsh -f -i
zpty -w z "PROMPT='' RPROMPT=''; autoload -U compinit && compinit -u -D; source ${(q)1}"
zpty -w z 'compadd () {
  if (( ${@[(I)-[OAD]]} )); then builtin compadd "$@"; return; fi
  local -a hits; builtin compadd -A hits "$@"
  local h; for h in $hits; do print -r -- "<cand>${(Q)h}</cand>"; done
  builtin compadd "$@"
}'
zpty -w z '_done () { print -r -- "<done>" }'
zpty -w z "bindkey '^I' complete-word; print READ''Y"
zpty -r z out '*READY*' || exit 3
shift
for line in "$@"; do
  zpty -w z "comppostfuncs=(_done)"
  zpty -w -n z "$line"$'\t'
  zpty -r z out '*<done>*'
  print -r -- "<line>$line</line>$out"
  zpty -w -n z $'\C-u'
done
zpty -d z
"""


def zsh_candidates(root: Path, lines: list[str]) -> dict[str, set[str]]:
    driver = root.parent / "capture.zsh"
    driver.write_text(ZSH_CAPTURE)
    proc = subprocess.run(["zsh", "-f", str(driver), str(SCRIPTS["zsh"]), *lines], cwd=root, env=shell_env(root),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = {}
    for part in proc.stdout.split("<line>")[1:]:
        line, rest = part.split("</line>", 1)
        found[line] = set(re.findall(r"<cand>(.*?)</cand>", rest.replace("\r", "")))
    return found


def fish_candidates(root: Path, lines: list[str]) -> dict[str, set[str]]:
    """`complete -C` (what fish offers on Tab) for each line, after sourcing the script."""
    program = f"source {SCRIPTS['fish']}\n" + "".join(
        f"echo '<line>'{shlex.quote(line)}'</line>'; complete -C {shlex.quote(line)}\n" for line in lines
    )
    proc = subprocess.run(["fish", "--no-config", "-c", program], cwd=root, env=shell_env(root),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = {}
    for part in proc.stdout.split("<line>")[1:]:
        line, rest = part.split("</line>", 1)
        found[line] = {entry.split("\t")[0] for entry in rest.splitlines() if entry}
    return found


def check_candidates(found: dict[str, set[str]], model) -> None:
    for line, check in CANDIDATES:
        assert check(found[line]), (line, sorted(found[line]))
    layers = found["cnntools featmaps net.safetensors --layer "]
    assert layer_names(model) <= layers and "features" in layers, sorted(layers)


ALL_LINES = [line for line, _ in CANDIDATES] + ["cnntools featmaps net.safetensors --layer "]


def test_static_names_are_the_registries():
    from cnntools.data.registry import KINDS
    from cnntools.models import ARCHITECTURES, get_architecture

    get_architecture("lenet")  # loads every family
    assert set(completion.ARCH_NAMES) == set(ARCHITECTURES)
    assert set(completion.DATA_NAMES) == set(KINDS)


@needs("bash")
def test_bash_offers_values(workdir):
    root, model = workdir
    check_candidates({line: bash_candidates(root, line) for line in ALL_LINES}, model)
    # The words as typed reach cnntools whole: bash itself splits cuda:0 and --device=cuda.
    assert bash_candidates(root, "cnntools eval net.safetensors --device cuda:") == {"0"}
    assert bash_candidates(root, "cnntools eval net.safetensors --device=cp") == {"cpu"}
    assert bash_candidates(root, "cnntools rf") == {"rf-calc"}


@needs("zsh")
def test_zsh_offers_values(workdir):
    root, model = workdir
    found = zsh_candidates(root, [*ALL_LINES, "cnntools eval net.safetensors --device=cp", "cnntools train --ar"])
    check_candidates(found, model)
    assert found["cnntools eval net.safetensors --device=cp"] == {"cpu"}
    assert found["cnntools train --ar"] == {"--arch", "--arch-args"}


@needs("fish")
def test_fish_offers_values(workdir):
    root, model = workdir
    found = fish_candidates(root, [*ALL_LINES, "cnntools eval net.safetensors --device=cp", "cnntools train --output n"])
    check_candidates(found, model)
    assert found["cnntools eval net.safetensors --device=cp"] == {"--device=cpu"}
    # No candidates from cnntools (an output file): fish completes file names.
    assert found["cnntools train --output n"] == {"net.safetensors", "notes.txt"}


# -------------------------------------------------------------------- what a Tab inserts

# Typed keys (\t a Tab) → the arguments the finished line gives cnntools.
TYPED = [
    ("cnntools eval ru\tX", ["eval", "runs/X"]),  # a folder: no space after it
    ("cnntools eval runs/\t", ["eval", "runs/only.safetensors"]),
    ("cnntools saliency net.safetensors --target bu\t", ["saliency", "net.safetensors", "--target", "bull mastiff"]),
    ("cnntools train --arch le\tX", ["train", "--arch", "lenet", "X"]),  # a whole value: a space after it
    ("cnntools train --arch torchv\tresnet18", ["train", "--arch", "torchvision:resnet18"]),  # a prefix: no space
    ("cnntools train --arch ti\tresnet18", ["train", "--arch", "timm:resnet18"]),
    ("cnntools train --ar\t lenet", ["train", "--arch", "lenet"]),  # --arch and --arch-args: their common prefix
    ("cnntools train --device cuda:\t", ["train", "--device", "cuda:0"]),
    ("cnntools featmaps net.safetensors --layer classifier.4\t-i 3", ["featmaps", "net.safetensors", "--layer", "classifier.4", "-i", "3"]),
]

SETUP = {
    "bash": (["bash", "--norc", "--noprofile", "-i"], "PS1='$ '; bind 'set bell-style none'; source {script}"),
    "zsh": (["zsh", "-f", "-i"], "PROMPT='$ '; unsetopt beep; autoload -U compinit && compinit -u -D; source {script}"),
    "fish": (["fish", "--no-config", "-i"], "function fish_prompt; echo -n '$ '; end; source {script}"),
}


def type_lines(shell: str, root: Path, typed: list[str]) -> list[list[str] | None]:
    """Type each entry into an interactive `shell` on a terminal, press Enter, and return the
    arguments the fake cnntools received (None where the line never ran)."""
    argv, setup = SETUP[shell]
    env = shell_env(root)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the shell, on the terminal
        os.chdir(root)
        os.execvpe(argv[0], argv, env)
    buffer = b""

    def read_until(pattern: bytes, timeout: float = 30.0) -> re.Match | None:
        nonlocal buffer
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            match = re.search(pattern, buffer)
            if match:
                buffer = buffer[match.end():]
                return match
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    buffer += os.read(fd, 65536)
                except OSError:
                    break
        return None

    results = []
    try:
        os.write(fd, (setup.format(script=SCRIPTS[shell]) + "; echo REA''DY\r").encode())
        assert read_until(rb"READY\r?\n"), f"{shell} did not start: {buffer[-500:]!r}"
        for keys in typed:
            for part in re.split(r"(\t)", keys):
                os.write(fd, part.encode())
                if part == "\t":
                    time.sleep(0.05)
            os.write(fd, b"\r")  # the shell finishes the Tab before it reads the Enter
            match = read_until(rb"<<ARGS (.*?) ARGS>>")
            results.append(json.loads(match.group(1)) if match else None)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
    return results


@pytest.mark.parametrize("shell", completion_scripts.SHELLS)
def test_a_tab_leaves_the_right_words(workdir, shell):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} not installed")
    root, _ = workdir
    got = type_lines(shell, root, [keys for keys, _ in TYPED])
    assert got == [expected for _, expected in TYPED]


# ------------------------------------------------------------------ protocol and install


def test_completing_layers_imports_no_torch(workdir):
    root, _ = workdir
    cwd = os.getcwd()
    os.chdir(root)
    try:
        proc, modules = run_wrapped([], {"_CNNTOOLS_COMPLETE": "complete_lines", "_TYPER_COMPLETE_FISH_ACTION": "get-args",
                                         "_TYPER_COMPLETE_ARGS": "cnntools featmaps net.safetensors --layer "})
    finally:
        os.chdir(cwd)
    assert "features.0" in proc.stdout.split()
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


@pytest.mark.parametrize("command", ["train", "eval", "saliency"])
def test_the_answer_has_one_line_per_candidate(command):
    # Every option of the command, each on one line with its whole help after a tab.
    from typer.main import get_command

    from cnntools.cli.app import app

    params = get_command(app).commands[command].params
    options = {"--help"} | {opt for p in params for opt in [*p.opts, *getattr(p, "secondary_opts", [])] if opt.startswith("--") and not getattr(p, "hidden", False)}
    env = {**os.environ, "PYTHONPATH": str(REPO), "_CNNTOOLS_COMPLETE": "complete_lines", "COLUMNS": "40",
           "_TYPER_COMPLETE_FISH_ACTION": "get-args", "_TYPER_COMPLETE_ARGS": f"cnntools {command} --"}
    proc = subprocess.run([sys.executable, "-m", "cnntools"], capture_output=True, text=True, env=env, timeout=60)
    lines = [line for line in proc.stdout.splitlines() if line]
    values = [line.split("\t")[0] for line in lines]
    assert set(values) == options and len(values) == len(lines), sorted(set(values) ^ options)
    helps = dict(line.split("\t", 1) for line in lines if "\t" in line)
    for param in params:
        if getattr(param, "help", None) and param.opts[0].startswith("--"):
            assert helps[param.opts[0]] == " ".join(param.help.split())


def test_one_line_joins_help():
    assert completion_scripts.one_line("--arch", "a\n  b\tc ") == "--arch\ta b c"
    assert completion_scripts.one_line("cpu", None) == "cpu"


@pytest.mark.parametrize("shell", completion_scripts.SHELLS)
def test_the_program_prints_the_shipped_scripts(shell):
    env = {**os.environ, "PYTHONPATH": str(REPO), "_CNNTOOLS_COMPLETE": f"source_{shell}"}
    proc = subprocess.run([sys.executable, "-m", "cnntools"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == SCRIPTS[shell].read_text() == completion_scripts.script(shell)


@pytest.mark.parametrize("shell", completion_scripts.SHELLS)
def test_install_writes_where_the_shell_loads_it(tmp_path, shell):
    path = completion_scripts.install(shell, home=tmp_path)
    completion_scripts.install(shell, home=tmp_path)  # twice: the rc files gain their lines once
    assert path.read_text() == completion_scripts.script(shell)
    if shell == "bash":
        assert path == tmp_path / ".bash_completions" / "cnntools.sh"
        assert (tmp_path / ".bashrc").read_text().count(f"source '{path}'") == 1
    elif shell == "zsh":
        assert path == tmp_path / ".zfunc" / "_cnntools"
        assert (tmp_path / ".zshrc").read_text().count("fpath+=~/.zfunc") == 1
    else:
        assert path == tmp_path / ".config" / "fish" / "completions" / "cnntools.fish"


@needs("zsh")
def test_zsh_completes_on_the_first_tab_when_autoloaded(workdir, tmp_path):
    # Installed on $fpath as _cnntools, the file is autoloaded on the first Tab and must
    # complete right away (Typer's script only registered itself then).
    root, _ = workdir
    functions = tmp_path / "zfunc"
    functions.mkdir()
    shutil.copy(SCRIPTS["zsh"], functions / "_cnntools")
    driver = tmp_path / "capture.zsh"
    driver.write_text(ZSH_CAPTURE.replace("source ${(q)1}", "fpath=(${(q)1} $fpath); autoload -U compinit && compinit -u -D"))
    proc = subprocess.run(["zsh", "-f", str(driver), str(functions), "cnntools rf-calc --arch le"], cwd=root,
                          env=shell_env(root), capture_output=True, text=True, timeout=60)
    assert "<cand>lenet</cand>" in proc.stdout, proc.stdout[-500:]


def test_show_and_install_completion_use_the_shipped_scripts(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "shellingham", None)  # not installed: $SHELL decides
    monkeypatch.setenv("SHELL", "/usr/bin/zsh")
    monkeypatch.setenv("HOME", str(tmp_path))
    shown = cli("--show-completion")
    assert shown.exit_code == 0 and shown.stdout == SCRIPTS["zsh"].read_text()
    installed = cli("--install-completion")
    assert installed.exit_code == 0, installed.stderr
    assert (tmp_path / ".zfunc" / "_cnntools").read_text() == SCRIPTS["zsh"].read_text()
    assert "zsh completion installed in" in installed.stderr and not installed.stdout
    monkeypatch.setenv("SHELL", "/bin/tcsh")
    refused = cli("--show-completion")
    assert refused.exit_code == 1 and not refused.stdout
    assert refused.stderr.startswith("Error: cannot complete for the shell 'tcsh'") and len(refused.stderr.splitlines()) == 1
