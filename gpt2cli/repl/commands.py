"""REPL slash commands: one table, `COMMANDS`. A new command is a function decorated with
`@command`; it gets the session and the text after its name, and raises Gpt2Error (ParamError for
a bad value, UsageError for a bad command line) for the session to report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpt2cli.errors import Gpt2Error, ParamError, UsageError
from gpt2cli.repl.input import BLOCK
from gpt2cli.repl.session import Session
from gpt2cli.repl.settings import SETTINGS, check_mode, setting_text, updated


@dataclass(frozen=True)
class Command:
    name: str
    run: Callable[[Session, str], None]
    usage: str
    help: str


COMMANDS: dict[str, Command] = {}


def command(name: str, usage: str, help: str, *aliases: str) -> Callable:
    """Register a slash command: `fn(session, args)`, args being the text after the name."""

    def register(fn: Callable[[Session, str], None]) -> Callable[[Session, str], None]:
        cmd = Command(name, fn, usage, help)
        for alias in (name, *aliases):
            COMMANDS[alias] = cmd
        return fn

    return register


@command("help", "/help", "this help")
def _help(session: Session, args: str) -> None:
    lines = [
        "Type a prompt and press Enter: GPT-2 continues it. A line ending in \\ continues on the",
        f'next line; {BLOCK} opens and closes a multi-line block; //text sends a prompt "/text".',
        "",
    ]
    seen = []
    for cmd in COMMANDS.values():
        if cmd not in seen:
            seen.append(cmd)
            lines.append(f"  {cmd.usage:<22}{cmd.help}")
    lines += [
        "",
        f"Settings: {', '.join(SETTINGS)} (seed none: random; stop none: no stop string;",
        "ignore_eos and context_shift: on or off; context_shift keeps going past the window).",
        "Modes: fresh (each entry stands alone), continue (each entry extends the running text).",
        "Ctrl-C stops a generation or clears the line; Ctrl-D, /quit or /exit leaves.",
    ]
    session.say("\n".join(lines))


@command("set", "/set NAME VALUE", "change a setting (see below)")
def _set(session: Session, args: str) -> None:
    name, _, value = args.lstrip().partition(" ")
    if not name:
        raise UsageError(f"usage: /set NAME VALUE, NAME one of {', '.join(SETTINGS)}")
    session.settings = updated(session.settings, name, value, session.parse_stop)
    name = name.lower().replace("-", "_")
    session.say(f"{name} = {setting_text(session.settings, name)}", "dim")


@command("show", "/show", "the model, the mode and every setting")
def _show(session: Session, args: str) -> None:
    lm = session.lm
    rows = [
        ("model", f"{lm.name} ({lm.path})"),
        ("device", str(lm.device)),
        ("dtype", lm.precision_name),
        ("window", f"{lm.context_length} tokens"),
        ("mode", session.mode),
        *((name, setting_text(session.settings, name)) for name in SETTINGS),
    ]
    session.say("\n".join(f"{name:<20}{value}" for name, value in rows))


@command("mode", "/mode fresh|continue", "each entry alone, or the running text as context")
def _mode(session: Session, args: str) -> None:
    if not args.strip():
        session.say(f"mode: {session.mode}")
        return
    session.mode = mode = check_mode(args.strip())
    more = " (the running text goes on from the last exchange; /reset clears it)"
    session.say(f"mode: {mode}{more if mode == 'continue' else ''}", "dim")


@command("reset", "/reset", "clear the running text")
def _reset(session: Session, args: str) -> None:
    session.reset()
    session.say("the running text is cleared", "dim")


@command("model", "/model NAME", "switch model (downloading it if needed)")
def _model(session: Session, args: str) -> None:
    name = args.strip()
    if not name:
        session.say(f"model: {session.describe_model()}")
        return
    if session.load is None:
        session.error("switching models is not available here")
        return
    try:
        session.switch_model(name)
    except KeyboardInterrupt:
        session.say("\nmodel switch cancelled", "dim")
        return
    except OSError as exc:
        session.error(f"cannot load {name}: {exc}")
        return
    session.say(f"model: {session.describe_model()}", "dim")


@command("save", "/save FILE", "write the session transcript as plain text")
def _save(session: Session, args: str) -> None:
    if not args.strip():
        raise UsageError("usage: /save FILE")
    path = Path(args.strip()).expanduser()
    try:
        path.write_text(session.transcript_text(), encoding="utf-8")
    except OSError as exc:
        session.error(f"cannot write {path}: {exc.strerror or exc}")
        return
    session.say(f"saved {len(session.transcript)} exchange(s) to {path}", "dim")


@command("quit", "/quit, /exit", "leave", "exit")
def _quit(session: Session, args: str) -> None:
    session.running = False


EXPLAIN_CANDIDATES = 10


@command("probs", "/probs on|off", "colour each generated token by its probability")
def _probs(session: Session, args: str) -> None:
    value = args.strip().lower()
    if value not in ("on", "off"):
        raise UsageError("usage: /probs on|off")
    if not session.colour_tokens(value == "on"):
        session.say("probabilities: the colours show on a colour terminal only", "dim")
    elif value == "off":
        session.say("probabilities: off", "dim")


@command("explain", "/explain [TEXT]", "the likeliest next tokens after the running text or TEXT")
def _explain(session: Session, args: str) -> None:
    from gpt2cli.runtime.scoring import candidate_steps
    from gpt2cli.ui.probs import print_candidates

    text = session.prompt_for(args) if args else session.context
    context = session.lm.tokenizer.encode(text)
    params = session.settings.params
    steps = candidate_steps(session.lm, context, [None], params, EXPLAIN_CANDIDATES)
    console = session.renderer.err_console  # like every message: stdout is the model's text
    print_candidates(console, steps, plain=not console.is_terminal)


def run_command(session: Session, line: str) -> None:
    """Run the slash command `line` (with its leading /); report a bad one on stderr."""
    name, _, args = line[1:].partition(" ")
    cmd = COMMANDS.get(name.lower())
    if cmd is None:
        session.error(f"unknown command /{name}: type /help for the list")
        return
    try:
        cmd.run(session, args)
    except ParamError as exc:
        session.error(exc.for_setting())
    except Gpt2Error as exc:
        session.error(str(exc))
