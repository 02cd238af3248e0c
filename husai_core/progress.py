"""Progress bars that reach the terminal from a notebook run by ``husai run`` / ``husai pipeline``.

In JupyterLab ``tqdm.auto`` draws widget bars. A kernel started by the runner has nobody
watching widgets: the runner sets ``HUSAI_PROGRESS=text`` for it, so bars are plain text on
stderr (redrawn every few seconds), which papermill forwards to the terminal; nbclient's stream
coalescing keeps only each bar's final state in the executed notebook.
"""

from __future__ import annotations

import os
from typing import Any

# Seconds between redraws of a text bar: each is a kernel message, and the terminal needs few.
MININTERVAL = 2.0


def tqdm(*args: Any, **kwargs: Any):
    """``tqdm.auto.tqdm``, or a plain-text bar inside a runner's kernel (``HUSAI_PROGRESS=text``)."""
    if os.environ.get("HUSAI_PROGRESS") == "text":
        from tqdm.std import tqdm as text_bar

        kwargs.setdefault("mininterval", MININTERVAL)
        kwargs.setdefault("leave", False)  # a finished bar gives way to the next line, not a pile of 100% lines
        return text_bar(*args, **kwargs)
    from tqdm.auto import tqdm as auto_bar

    return auto_bar(*args, **kwargs)
