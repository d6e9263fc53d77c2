"""Model names -> local checkpoint folders. (Placeholder: local folders only; the download issue
replaces this with the Hugging Face Hub implementation.)"""

from __future__ import annotations

from pathlib import Path

from gpt2cli.errors import ModelNotFoundError

SIZES: dict[str, str] = {
    "small": "openai-community/gpt2",
    "medium": "openai-community/gpt2-medium",
    "large": "openai-community/gpt2-large",
    "xl": "openai-community/gpt2-xl",
}


def resolve_model(name: str, *, revision: str | None = None, offline: bool | None = None) -> Path:
    """Return the local folder holding checkpoint `name` (a size, a repo id, or a folder)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    raise ModelNotFoundError(f"model {name!r} not found: not a local folder")
