"""Opening the model a command asked for, as a user at a terminal sees it: the name checked as
soon as the flags are read (before torch), the device checked next (before a download that
would be wasted), the checkpoint resolved with Rich download bars, then the weights loaded under
a "Loading …" note, and what the checkpoint's files hold that cannot be used said in
`gpt2: warning:` lines."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from gpt2cli import console
from gpt2cli.errors import CheckpointWarning
from gpt2cli.types import LoadOptions

if TYPE_CHECKING:
    from gpt2cli.runtime.loader import LoadedModel


def check_model(options: LoadOptions) -> LoadOptions:
    """`options`, once what can be known of its model without torch or the network is checked:
    a name that cannot be a model fails now (hub/names.py: exit 2 for a mistyped name, "no such
    folder" for a path), and --revision with a local folder, which has no revisions, is warned
    about."""
    from gpt2cli import console
    from gpt2cli.hub.names import check_model_name, local_folder

    check_model_name(options.model)
    if options.revision is not None and local_folder(options.model) is not None:
        console.warn(f"--revision {options.revision} is ignored: {options.model} is a local folder")
    return options


def open_model(options: LoadOptions) -> LoadedModel:
    """The LoadedModel `options` name (downloading it first when needed)."""
    from gpt2cli.runtime.threads import configure_openmp

    configure_openmp(options.threads)  # before torch is imported
    from gpt2cli.hub.fetch import resolve_model
    from gpt2cli.ui.downloads import RichDownloadProgress
    from gpt2cli.ui.loading import loading

    with loading(options.model):
        from gpt2cli.runtime.loader import check_device

        check_device(options)
    folder = resolve_model(
        options.model,
        revision=options.revision,
        offline=options.offline,
        progress=RichDownloadProgress,
    )
    with loading(options.model), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CheckpointWarning)
        from gpt2cli.runtime.loader import load_folder

        lm = load_folder(folder, options)
    for warning in caught:  # after the "Loading" note is erased
        if issubclass(warning.category, CheckpointWarning):
            console.warn(str(warning.message))
        else:
            warnings.showwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return lm
