"""The interactive loop behind `gpt2 repl`: read an entry, generate, show it with the Renderer.

On a terminal: a banner, `>>> ` prompts, readline line editing and history. When stdin is not a
terminal, entries are read line by line with no decorations, so a session can be scripted: only
continuations go to stdout, every message goes to stderr.

An entry is a prompt, or a slash command (gpt2cli/repl_commands.py). Entries are read by
gpt2cli/repl_input.py; settings and /set parsing are in gpt2cli/repl_settings.py. No Typer here:
the command line is gpt2cli/commands/repl.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.text import Text

from gpt2cli.errors import Gpt2Error, ParamError
from gpt2cli.render import Renderer
from gpt2cli.repl_commands import COMMANDS
from gpt2cli.repl_input import PS1, PS2, PipedInput, TerminalInput, history_path, read_entry
from gpt2cli.repl_settings import MODES, SETTINGS, Settings, check_mode

if TYPE_CHECKING:
    from gpt2cli.engine import LoadedModel


def join(context: str, entry: str) -> str:
    """The running text with a new entry after it: a space between two words."""
    if context and entry and not context[-1].isspace() and not entry[0].isspace():
        return f"{context} {entry}"
    return context + entry


def describe(exc: Gpt2Error) -> str:
    if isinstance(exc, ParamError):
        return f"invalid value for {exc.param}: {exc.detail}"
    return str(exc)


class Session:
    """One REPL session: the model, the settings, the mode, the running text and the transcript.

    `load(name)` loads another model for /model; `parse_stop` turns /set stop's value into stop
    strings as the --stop flag does. `engine_options` are extra keyword arguments for
    engine.generate (e.g. logprobs=True while /probs colours tokens)."""

    def __init__(
        self,
        lm: LoadedModel,
        settings: Settings | None = None,
        *,
        mode: str = "fresh",
        renderer: Renderer | None = None,
        load: Callable[[str], LoadedModel] | None = None,
        parse_stop: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        self.lm = lm
        self.settings = settings or Settings()
        self.mode = check_mode(mode)
        self.renderer = renderer or Renderer(echo=False)
        self.load = load
        self.parse_stop = parse_stop or list
        self.engine_options: dict[str, object] = {}
        self.context = ""  # the running text: the last exchange, or the whole story in continue
        self.trimming = False  # the running text has outgrown the window (noted once)
        self.transcript: list[tuple[str, str]] = []  # (prompt, continuation), for /save
        self.running = True

    # -- messages (stderr: stdout carries only model text) --------------------------------
    def say(self, message: str, style: str = "") -> None:
        console = self.renderer.err_console
        console.print(Text(message, style=style), soft_wrap=not console.is_terminal)

    def error(self, message: str) -> None:
        self.say(message, "red")

    def describe_model(self) -> str:
        dtype = str(self.lm.dtype).removeprefix("torch.")
        return f"{self.lm.name} on {self.lm.device}, {dtype}"

    # -- entries ---------------------------------------------------------------------------
    def handle(self, entry: str) -> None:
        if entry.startswith("/") and not entry.startswith("//"):
            self.run_command(entry)
        else:
            self.generate(entry[1:] if entry.startswith("//") else entry)

    def run_command(self, line: str) -> None:
        name, _, args = line[1:].partition(" ")
        cmd = COMMANDS.get(name.lower())
        if cmd is None:
            self.error(f"unknown command /{name}: type /help for the list")
            return
        try:
            cmd.run(self, args)
        except Gpt2Error as exc:
            self.error(describe(exc))

    def prompt_for(self, entry: str) -> str:
        """What the model is given for `entry`: the entry alone in fresh mode; in continue mode
        the running text and the entry, trimmed from the left to fit the window."""
        if self.mode == "fresh":
            return entry
        return self._fit(join(self.context, entry))

    def generate(self, entry: str) -> None:
        if not entry and (self.mode == "fresh" or not self.context):
            return  # an empty line in fresh mode just prompts again
        from gpt2cli.engine import generate

        prompt = self.prompt_for(entry)
        s = self.settings
        events = generate(
            self.lm,
            prompt,
            s.params,
            max_tokens=s.max_tokens,
            stop=s.stop,
            ignore_eos=s.ignore_eos,
            **self.engine_options,  # type: ignore[arg-type]
        )
        shown = []
        try:
            shown = self.renderer.render(events, prompt=prompt, model=self.lm.name)
        except KeyboardInterrupt:  # outside the event loop the renderer guards
            self.renderer.interrupted = True
        finally:
            events.close()
        text = shown[0].text if shown else ""
        self.transcript.append((entry, text))
        self.context = prompt + text

    def _fit(self, text: str) -> str:
        from gpt2cli.engine import fit_prompt

        tok, window = self.lm.tokenizer, self.lm.context_length
        ids = tok.encode(text)
        kept, dropped = fit_prompt(ids, window, self.settings.max_tokens)
        if not dropped:
            return text
        if not self.trimming:
            self.trimming = True
            self.renderer.info(
                f"the running text no longer fits the {window}-token window: "
                "from now on its oldest part is dropped"
            )
        cut = dropped
        while cut < len(ids):  # re-encoding the kept text may merge tokens differently
            fitted = tok.decode(ids[cut:]).lstrip("\ufffd")
            if len(tok.encode(fitted)) <= len(kept):
                return fitted
            cut += 1
        return ""

    def transcript_text(self) -> str:
        out = []
        for prompt, text in self.transcript:
            first, *rest = prompt.split("\n")
            out.append(PS1 + first + "".join(f"\n{PS2}{line}" for line in rest) + "\n")
            out.append(text if text.endswith("\n") or not text else text + "\n")
        return "".join(out)


# -- the loop ----------------------------------------------------------------------------------
def run_session(session: Session, source: PipedInput | TerminalInput | None = None) -> int:
    """Read and handle entries until /quit or the end of input; return the exit status
    (0; 130 when Ctrl-C interrupts a scripted session)."""
    if source is None:
        if sys.stdin is not None and sys.stdin.isatty():
            words = {"": [f"/{name}" for name in COMMANDS], "/set": SETTINGS, "/mode": MODES}
            source = TerminalInput(history_path(), words)
        else:
            source = PipedInput(sys.stdin)
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
            session.handle(entry)
        except KeyboardInterrupt:
            session.renderer.interrupted = True
            session.say("")
        if session.renderer.interrupted and not source.interactive:
            return 130
        session.renderer.interrupted = False
    return 0
