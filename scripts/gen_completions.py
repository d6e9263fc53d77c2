"""Write completions/gpt2.{bash,zsh,fish} from the Typer app's own shell-completion support.

    python3 scripts/gen_completions.py          # rewrite the files
    python3 scripts/gen_completions.py --check  # exit 1 if they no longer match the app

The scripts are thin: on <Tab> the shell runs `gpt2` with `_GPT2_COMPLETE=complete_<shell>`
and the app answers (without importing torch), so they list every command and flag as it is now.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHELLS = ("bash", "zsh", "fish")
PROG, COMPLETE_VAR = "gpt2", "_GPT2_COMPLETE"


def completion_script(shell: str) -> str:
    """The script `_GPT2_COMPLETE=source_<shell> gpt2` prints, ending in one newline."""
    from typer.main import get_command

    from gpt2cli.cli import app

    try:
        from typer._click.shell_completion import get_completion_class
    except ImportError:  # pragma: no cover - older typer on top of click
        from click.shell_completion import get_completion_class

    command = get_command(app)  # registers typer's completion classes
    cls = get_completion_class(shell)
    if cls is None:
        raise ValueError(f"no completion support for {shell}")
    return cls(command, {}, PROG, COMPLETE_VAR).source().strip() + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for shell in SHELLS:
        path = ROOT / "completions" / f"{PROG}.{shell}"
        text = completion_script(shell)
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python3 scripts/gen_completions.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
