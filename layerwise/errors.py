"""Errors the layer-wise pipeline raises for bad inputs (the CLI prints them as one line)."""

from __future__ import annotations


class LayerwiseError(ValueError):
    """A bad input to the pipeline: a missing file, an impossible setting, empty text."""


class MissingPackageError(LayerwiseError):
    """A data or model package is not installed; the message holds the one command to install it."""

    def __init__(self, what: str, command: str) -> None:
        super().__init__(f"{what} is not installed; install it with:  {command}")
        self.command = command


class UnsupportedModelError(LayerwiseError):
    """The model's layout is not one the block-by-block driver can walk."""
