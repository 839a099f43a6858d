"""`mocolab linear | finetune | supervised | compare`: the paper's evaluation protocols."""

from __future__ import annotations


def add_commands(sub) -> None:
    """Adds the evaluation sub-commands to the `mocolab` parser's subparsers `sub`."""
