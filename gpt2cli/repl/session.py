"""One REPL session's state and what it can do: the model, the settings, the mode, the running
text, the transcript, and generating an answer with the Renderer. No Typer and no input reading
here: gpt2cli/repl/loop.py reads entries, gpt2cli/repl/commands.py holds the slash commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.text import Text

from gpt2cli.repl.input import PS1, PS2
from gpt2cli.repl.settings import Settings, check_mode
from gpt2cli.ui.render import Renderer

if TYPE_CHECKING:
    from gpt2cli.runtime.loader import LoadedModel


def join(context: str, entry: str) -> str:
    """The running text with a new entry after it: a space between two words."""
    if context and entry and not context[-1].isspace() and not entry[0].isspace():
        return f"{context} {entry}"
    return context + entry


class Session:
    """One REPL session: the model, the settings, the mode, the running text and the transcript.

    `load(name)` loads another model for /model; `parse_stop` turns /set stop's value into stop
    strings as the --stop flag does."""

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
        dtype = self.lm.precision_name
        return f"{self.lm.name} on {self.lm.device}, {dtype}"

    # -- state changes the slash commands ask for ----------------------------------------------
    def reset(self) -> None:
        """Forget the running text."""
        self.context, self.trimming = "", False

    def switch_model(self, name: str) -> None:
        """Load model `name` (downloading it if needed) and use it from now on."""
        if self.load is None:
            raise RuntimeError("switching models is not available here")
        self.lm = self.load(name)
        colours = self.renderer.delta_spans
        if colours is not None:
            colours.tokenizer = self.lm.tokenizer  # type: ignore[attr-defined]

    def colour_tokens(self, on: bool) -> bool:
        """Colour generated tokens by probability (as generate --show-probs). Returns whether
        the colours can show (a colour terminal)."""
        from gpt2cli.ui.probs import TokenColourer, print_legend, shows_colour

        renderer = self.renderer
        renderer.delta_spans = None
        self.settings = self.settings.with_value("logprobs", False)
        if not on:
            return True
        if renderer.mode != "terminal" or not shows_colour(renderer.console):
            return False
        renderer.delta_spans = TokenColourer(self.lm.tokenizer)
        self.settings = self.settings.with_value("logprobs", True)
        print_legend(renderer.err_console)
        return True

    # -- entries ---------------------------------------------------------------------------
    def prompt_for(self, entry: str) -> str:
        """What the model is given for `entry`: the entry alone in fresh mode; in continue mode
        the running text and the entry, trimmed from the left to fit the window."""
        if self.mode == "fresh":
            return entry
        return self._fit(join(self.context, entry))

    def generate(self, entry: str) -> None:
        if not entry and (self.mode == "fresh" or not self.context):
            return  # an empty line in fresh mode just prompts again
        from gpt2cli.runtime.generate import generate

        prompt = self.prompt_for(entry)
        events = generate(self.lm, prompt, self.settings.params, self.settings.generation)
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
        from gpt2cli.runtime.generate import fit_prompt

        tok, window = self.lm.tokenizer, self.lm.context_length
        ids = tok.encode(text)
        generation = self.settings.generation
        kept, dropped = fit_prompt(ids, window, generation.max_tokens, generation.context_shift)
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
