_gpt2_completion() {
    local IFS=$'
'
    COMPREPLY=( $( env COMP_WORDS="${COMP_WORDS[*]}" \
                   COMP_CWORD=$COMP_CWORD \
                   _GPT2_COMPLETE=complete_bash $1 ) )
    return 0
}

complete -o default -F _gpt2_completion gpt2
