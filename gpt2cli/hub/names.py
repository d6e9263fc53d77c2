"""What a model name means: a size (small, medium, large, xl), a Hub repo id (owner/name), or an
existing folder. No network, no torch."""

from __future__ import annotations

from pathlib import Path

from gpt2cli.errors import ModelNotFoundError, UsageError

SIZES: dict[str, str] = {
    "small": "openai-community/gpt2",
    "medium": "openai-community/gpt2-medium",
    "large": "openai-community/gpt2-large",
    "xl": "openai-community/gpt2-xl",
}
DEFAULT_REVISION = "main"


def is_repo_id(name: str) -> bool:
    """`owner/name` as the Hub allows it."""
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        return False
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def repo_id_for(name: str) -> str:
    """The Hub repo id behind a size name or an `owner/name` id."""
    if name in SIZES:
        return SIZES[name]
    if is_repo_id(name):
        return name
    raise ModelNotFoundError(
        f"unknown model {name!r}: use small, medium, large, xl, a Hub repo id (owner/name) "
        "or the path of an existing folder"
    )


def local_folder(name: str) -> Path | None:
    """The folder `name` names, if it is one (size names win over same-named folders)."""
    path = Path(name).expanduser()
    return path if name not in SIZES and path.is_dir() else None


def looks_like_path(name: str) -> bool:
    """A name only a path can be: ./x, ../x, /x, ~/x, or with more than one slash."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def check_model_name(name: str) -> None:
    """Fail at once, before torch is imported, when `name` cannot name a model: a path to no
    folder (ModelNotFoundError, exit 1, as for any missing model) or a word that is neither a
    size nor owner/name (UsageError, exit 2: a mistyped flag value). Whether a repo id exists
    is left to the Hub."""
    if name in SIZES or local_folder(name) is not None:
        return
    path = Path(name).expanduser()
    if path.exists():
        raise ModelNotFoundError(f"{name} is a file, not a checkpoint folder")
    if looks_like_path(name):
        raise ModelNotFoundError(f"no such folder: {name}")
    try:
        repo_id_for(name)
    except ModelNotFoundError as exc:
        raise UsageError(str(exc)) from None
