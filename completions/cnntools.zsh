
#compdef cnntools

_cnntools_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _CNNTOOLS_COMPLETE=complete_zsh cnntools)
}

compdef _cnntools_completion cnntools
