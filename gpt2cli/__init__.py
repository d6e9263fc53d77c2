"""gpt2cli: run GPT-2 locally. The public API is re-exported lazily so `import gpt2cli`
(and therefore `gpt2 --help`) never imports torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "gpt2cli.runtime.loader",
    "LoadedModel": "gpt2cli.runtime.loader",
    "generate": "gpt2cli.runtime.generate",
    "complete": "gpt2cli.runtime.generate",
    "Completion": "gpt2cli.types",
    "Delta": "gpt2cli.types",
    "Finish": "gpt2cli.types",
    "GenerationConfig": "gpt2cli.types",
    "LoadOptions": "gpt2cli.types",
    "SamplingParams": "gpt2cli.types",
    "Start": "gpt2cli.types",
}

__all__ = [
    "Completion",
    "Delta",
    "Finish",
    "GenerationConfig",
    "LoadOptions",
    "LoadedModel",
    "SamplingParams",
    "Start",
    "__version__",
    "complete",
    "generate",
    "load_model",
]

if TYPE_CHECKING:  # pragma: no cover
    from gpt2cli.runtime.generate import complete, generate
    from gpt2cli.runtime.loader import LoadedModel, load_model
    from gpt2cli.types import (
        Completion,
        Delta,
        Finish,
        GenerationConfig,
        LoadOptions,
        SamplingParams,
        Start,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gpt2cli' has no attribute {name!r}")
