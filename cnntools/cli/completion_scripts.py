"""The shell side of completion: the bash, zsh and fish scripts cnntools ships, and
`--install-completion`.

The candidates come from cnntools itself (Typer's completion protocol, the value completers
in `cnntools.cli.completion`). The scripts are ours rather than Typer's because Typer's append a
space after a folder (`runs/ `) or a prefix (`torchvision: `) in bash and zsh, leave a class
name with a space unquoted in bash, split `cuda:0` at the colon in bash, and in zsh complete
nothing on the first Tab after an autoload from fpath. Every script asks cnntools once per Tab
with the line up to the cursor and falls back to file names when it has no candidates. The
answer is one candidate per line, `value<TAB>help` with the help joined into one line (the
`lines` protocol below): Typer's fish answer wraps long help onto new lines, and every script
splits on newlines, so those pieces of help would become candidates.
"""

from __future__ import annotations

import os
from pathlib import Path

PROG = "cnntools"
COMPLETE_VAR = "_CNNTOOLS_COMPLETE"
SHELLS = ("bash", "zsh", "fish")
# Where each shell looks for a script installed with the program (PREFIX/share/...; pip puts
# the wheel's data files there), as (folder under PREFIX, file name). The checkout keeps them
# under completions/SHELL/ with the same file names, so the wheel's data files are those files.
SHIPPED = {
    "bash": ("share/bash-completion/completions", PROG),  # bash-completion loads it on demand
    "zsh": ("share/zsh/site-functions", f"_{PROG}"),  # on zsh's default $fpath
    "fish": ("share/fish/vendor_completions.d", f"{PROG}.fish"),  # fish's vendor folder
}


def checkout_path(shell: str) -> str:
    """The script's path in the checkout, relative to its root (completions/SHELL/NAME)."""
    return f"completions/{shell}/{SHIPPED[shell][1]}"

# How each script asks: Typer's fish protocol reads the words up to the cursor from one
# string, so every shell hands over the line as typed (bash would otherwise split words at ':').
PROTOCOL = "lines"
_ASK = f"env {COMPLETE_VAR}=complete_{PROTOCOL} _TYPER_COMPLETE_FISH_ACTION=get-args _TYPER_COMPLETE_ARGS="

BASH = f"""\
# bash completion for {PROG}: `source` this file (`{PROG} --install-completion` does it from ~/.bashrc).
_{PROG}_completion() {{
    local line=${{COMP_LINE:0:COMP_POINT}} word prefix value answer
    mapfile -t answer < <({_ASK}"$line" "$1" 2>/dev/null)
    # bash replaces only the text after the word's last ':' (cuda:0): drop what precedes it.
    word=${{line##*[[:space:]]}}
    [[ $word == -*=* ]] && word=${{word#*=}}
    [[ $word == *:* && $COMP_WORDBREAKS == *:* ]] && prefix=${{word%"${{word##*:}}"}}
    COMPREPLY=()
    for value in "${{answer[@]}}"; do
        value=${{value%%$'\\t'*}}  # the help after the tab is for fish and zsh
        value=${{value#"$prefix"}}
        [[ -n $value ]] && COMPREPLY+=("$value")
    done
    # A folder or a prefix (runs/, torchvision:) is a step, not a whole word: no space after it.
    if (( ${{#COMPREPLY[@]}} == 1 )) && [[ ${{COMPREPLY[0]}} == */ || ${{COMPREPLY[0]}} == *: ]]; then
        compopt -o nospace
    fi
    local i
    for i in "${{!COMPREPLY[@]}}"; do  # quoted as typed: a class name with a space stays one word
        printf -v "COMPREPLY[i]" '%q' "${{COMPREPLY[i]}}"
    done
    return 0
}}

complete -o default -F _{PROG}_completion {PROG}
"""

ZSH = f"""\
#compdef {PROG}
# zsh completion for {PROG}: `source` this file after compinit, or put it on $fpath as _{PROG}
# (`{PROG} --install-completion` does the latter).
_{PROG}() {{
  local -a described nospace
  local entry value help ret=1
  local answer="$({_ASK}"${{words[1,CURRENT]}}" {PROG} 2>/dev/null)"
  if [[ -z $answer ]]; then
    _files
    return
  fi
  [[ $PREFIX == -*=* ]] && compset -P '*='  # --option=value: complete the value
  for entry in "${{(@f)answer}}"; do
    value=${{entry%%$'\\t'*}}
    help=${{entry#"$value"}}
    help=${{help#$'\\t'}}
    if [[ $value == */ || $value == *: ]]; then
      nospace+=("$value")  # a folder or a prefix (runs/, torchvision:): no space after it
    else
      described+=("${{value//:/\\\\:}}${{help:+:$help}}")
    fi
  done
  (( $#described )) && _describe -t values value described && ret=0
  (( $#nospace )) && compadd -S '' -- "${{nospace[@]}}" && ret=0
  return ret
}}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _{PROG} "$@"  # autoloaded from $fpath: complete now
else
  compdef _{PROG} {PROG}
fi
"""

FISH = f"""\
# fish completion for {PROG}: put it in ~/.config/fish/completions/ (`{PROG} --install-completion` does).
function __{PROG}_complete --description 'Ask {PROG} for the candidates; false when it has none (fish then completes files)'
    set -g __{PROG}_candidates ({_ASK}(commandline -cp) {PROG} 2>/dev/null | string match -v '')
    # --option=value: cnntools answers values, fish replaces the whole word.
    if set -l option (commandline -ct | string match -r -- '^-[^=]*=')
        set __{PROG}_candidates $option$__{PROG}_candidates
    end
    test (count $__{PROG}_candidates) -gt 0
end

complete --command {PROG} --no-files --condition __{PROG}_complete --arguments '$__{PROG}_candidates'
"""

SCRIPTS = {"bash": BASH, "zsh": ZSH, "fish": FISH}


def one_line(value: str, help_text: str | None) -> str:
    """A candidate as the scripts read it: `value<TAB>help`, every run of whitespace in the
    help (its line wraps included) one space, so the answer has one line per candidate."""
    value = " ".join(value.split("\n"))
    help_text = " ".join((help_text or "").split())
    return f"{value}\t{help_text}" if help_text else value


def register_protocol() -> None:
    """Teach Typer's completion the `lines` answer: Typer's fish protocol (the words up to the
    cursor in _TYPER_COMPLETE_ARGS), each candidate on one line (`one_line`). Typer has no
    public hook for this; its fish class is the one private name cnntools uses (typer is
    pinned to a minor version in pyproject.toml, and tests/test_completion.py types Tabs)."""
    from typer._click.shell_completion import add_completion_class
    from typer._completion_classes import FishComplete

    class LinesComplete(FishComplete):
        name = PROTOCOL

        def format_completion(self, item) -> str:
            return one_line(item.value, item.help)

    add_completion_class(LinesComplete, PROTOCOL)


def script(shell: str) -> str:
    """The completion script for `shell` (bash, zsh or fish)."""
    from cnntools.core.errors import CnnError

    if shell not in SCRIPTS:
        raise CnnError(f"no completion for the shell {shell!r}: choose {', '.join(SHELLS)}")
    return SCRIPTS[shell]


def current_shell() -> str:
    """The shell cnntools was started from (else the login shell, $SHELL)."""
    from cnntools.core.errors import CnnError

    name = None
    try:
        import shellingham

        name = shellingham.detect_shell()[0]
    except Exception:  # not installed, or no shell among the parents
        name = os.path.basename(os.environ.get("SHELL", ""))
    if name not in SCRIPTS:
        raise CnnError(f"cannot complete for the shell {name or '(unknown)'!r}: bash, zsh and fish are supported "
                       f"(print a script with {COMPLETE_VAR}=source_SHELL {PROG})")
    return name


def _append_once(path: Path, line: str) -> None:
    text = path.read_text() if path.is_file() else ""
    if line not in text.splitlines():
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(("" if not text or text.endswith("\n") else "\n") + line + "\n")


def install(shell: str, home: Path | None = None) -> Path:
    """Write the script where `shell` loads it at start and return its path: bash sources
    ~/.bash_completions/cnntools.sh from ~/.bashrc, zsh autoloads ~/.zfunc/_cnntools
    (~/.zshrc gains the fpath and compinit lines), fish reads ~/.config/fish/completions/."""
    home = home or Path.home()
    text = script(shell)
    if shell == "bash":
        target = home / ".bash_completions" / f"{PROG}.sh"
        _append_once(home / ".bashrc", f"source '{target}'")
    elif shell == "zsh":
        target = home / ".zfunc" / f"_{PROG}"
        _append_once(home / ".zshrc", "fpath+=~/.zfunc; autoload -Uz compinit; compinit")
    else:
        target = home / ".config" / "fish" / "completions" / f"{PROG}.fish"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target
