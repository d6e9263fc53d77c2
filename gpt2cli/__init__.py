"""gpt2cli: run GPT-2 locally. The public API is re-exported lazily so `import gpt2cli`
(and therefore `gpt2 --help`) never imports torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "gpt2cli.engine",
    "generate": "gpt2cli.engine",
    "complete": "gpt2cli.engine",
    "LoadedModel": "gpt2cli.engine",
    "Completion": "gpt2cli.engine",
    "SamplingParams": "gpt2cli.sampling",
}

__all__ = [
    "Completion",
    "LoadedModel",
    "SamplingParams",
    "__version__",
    "complete",
    "generate",
    "load_model",
]

if TYPE_CHECKING:  # pragma: no cover
    from gpt2cli.engine import Completion, LoadedModel, complete, generate, load_model
    from gpt2cli.sampling import SamplingParams


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gpt2cli' has no attribute {name!r}")
