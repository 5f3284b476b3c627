# bash completion for cnntools: `source` this file (`cnntools --install-completion` does it from ~/.bashrc).
_cnntools_completion() {
    local line=${COMP_LINE:0:COMP_POINT} word prefix value answer
    mapfile -t answer < <(env _CNNTOOLS_COMPLETE=complete_lines _TYPER_COMPLETE_FISH_ACTION=get-args _TYPER_COMPLETE_ARGS="$line" "$1" 2>/dev/null)
    # bash replaces only the text after the word's last ':' (cuda:0): drop what precedes it.
    word=${line##*[[:space:]]}
    [[ $word == -*=* ]] && word=${word#*=}
    [[ $word == *:* && $COMP_WORDBREAKS == *:* ]] && prefix=${word%"${word##*:}"}
    COMPREPLY=()
    for value in "${answer[@]}"; do
        value=${value%%$'\t'*}  # the help after the tab is for fish and zsh
        value=${value#"$prefix"}
        [[ -n $value ]] && COMPREPLY+=("$value")
    done
    # A folder or a prefix (runs/, torchvision:) is a step, not a whole word: no space after it.
    if (( ${#COMPREPLY[@]} == 1 )) && [[ ${COMPREPLY[0]} == */ || ${COMPREPLY[0]} == *: ]]; then
        compopt -o nospace
    fi
    local i
    for i in "${!COMPREPLY[@]}"; do  # quoted as typed: a class name with a space stays one word
        printf -v "COMPREPLY[i]" '%q' "${COMPREPLY[i]}"
    done
    return 0
}

complete -o default -F _cnntools_completion cnntools
