# fish completion for cnntools: put it in ~/.config/fish/completions/ (`cnntools --install-completion` does).
function __cnntools_complete --description 'Ask cnntools for the candidates; false when it has none (fish then completes files)'
    set -g __cnntools_candidates (env _CNNTOOLS_COMPLETE=complete_lines _TYPER_COMPLETE_FISH_ACTION=get-args _TYPER_COMPLETE_ARGS=(commandline -cp) cnntools 2>/dev/null | string match -v '')
    # --option=value: cnntools answers values, fish replaces the whole word.
    if set -l option (commandline -ct | string match -r -- '^-[^=]*=')
        set __cnntools_candidates $option$__cnntools_candidates
    end
    test (count $__cnntools_candidates) -gt 0
end

complete --command cnntools --no-files --condition __cnntools_complete --arguments '$__cnntools_candidates'
