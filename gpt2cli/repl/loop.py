"""The interactive loop behind `gpt2 repl`: read an entry, run it (a slash command or a prompt),
and go on until /quit or the end of input.

On a terminal: a banner, `>>> ` prompts, readline line editing and history. When stdin is not a
terminal, entries are read line by line with no decorations, so a session can be scripted: only
continuations go to stdout, every message goes to stderr. An error in one entry is reported and
the session goes on."""

from __future__ import annotations

import sys

from gpt2cli.errors import Gpt2Error, ParamError, describe
from gpt2cli.repl.commands import COMMANDS, run_command
from gpt2cli.repl.input import PipedInput, TerminalInput, history_path, read_entry
from gpt2cli.repl.session import Session
from gpt2cli.repl.settings import MODES, SETTINGS


def handle(session: Session, entry: str) -> None:
    """One entry: `/command args`, or a prompt (`//text` sends "/text")."""
    if entry.startswith("/") and not entry.startswith("//"):
        run_command(session, entry)
    else:
        session.generate(entry[1:] if entry.startswith("//") else entry)


def run_session(session: Session, source: PipedInput | TerminalInput | None = None) -> int:
    """Read and handle entries until /quit or the end of input; return the exit status
    (0; 130 when Ctrl-C interrupts a scripted session)."""
    if source is None:
        if sys.stdin is not None and sys.stdin.isatty():
            words = {"": [f"/{name}" for name in COMMANDS], "/set": SETTINGS, "/mode": MODES}
            source = TerminalInput(history_path(), words)
        else:
            source = PipedInput(sys.stdin, warn=session.renderer.warn)
    try:
        return _loop(session, source)
    finally:
        source.close()


def _loop(session: Session, source: PipedInput | TerminalInput) -> int:
    if source.interactive:
        session.say(f"gpt2 repl · {session.describe_model()} · /help for commands, Ctrl-D to quit")
    while session.running:
        try:
            entry = read_entry(source)
        except EOFError:
            if source.interactive:
                session.say("")
            return 0
        except KeyboardInterrupt:
            if not source.interactive:
                return 130
            session.say("")
            session.say("(the line is cleared; Ctrl-D, /quit or /exit leaves)", "dim")
            continue
        try:
            handle(session, entry)
        except KeyboardInterrupt:
            session.renderer.interrupted = True
            session.say("")
        except ParamError as exc:
            session.error(f"gpt2: error: {exc.for_setting()}")
        except (Gpt2Error, RuntimeError, ValueError) as exc:  # this answer failed, not the session
            message, _ = describe(exc)
            session.error(f"gpt2: error: {message}")
        if session.renderer.interrupted and not source.interactive:
            return 130
        session.renderer.interrupted = False
    return 0
