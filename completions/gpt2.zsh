#compdef gpt2

_gpt2_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _GPT2_COMPLETE=complete_zsh gpt2)
}

compdef _gpt2_completion gpt2
