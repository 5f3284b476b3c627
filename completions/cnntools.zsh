#compdef cnntools
# zsh completion for cnntools: `source` this file after compinit, or put it on $fpath as _cnntools
# (`cnntools --install-completion` does the latter).
_cnntools() {
  local -a described nospace
  local entry value help ret=1
  local answer="$(env _CNNTOOLS_COMPLETE=complete_lines _TYPER_COMPLETE_FISH_ACTION=get-args _TYPER_COMPLETE_ARGS="${words[1,CURRENT]}" cnntools 2>/dev/null)"
  if [[ -z $answer ]]; then
    _files
    return
  fi
  [[ $PREFIX == -*=* ]] && compset -P '*='  # --option=value: complete the value
  for entry in "${(@f)answer}"; do
    value=${entry%%$'\t'*}
    help=${entry#"$value"}
    help=${help#$'\t'}
    if [[ $value == */ || $value == *: ]]; then
      nospace+=("$value")  # a folder or a prefix (runs/, torchvision:): no space after it
    else
      described+=("${value//:/\\:}${help:+:$help}")
    fi
  done
  (( $#described )) && _describe -t values value described && ret=0
  (( $#nospace )) && compadd -S '' -- "${nospace[@]}" && ret=0
  return ret
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _cnntools "$@"  # autoloaded from $fpath: complete now
else
  compdef _cnntools cnntools
fi
