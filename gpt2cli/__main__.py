"""`python -m gpt2cli` runs the `gpt2` command."""

from gpt2cli.cli import main

if __name__ == "__main__":
    main()
