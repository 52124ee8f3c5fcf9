"""Exceptions raised by the package. Every message says what went wrong and what to do about it."""

from __future__ import annotations


class InstructCellError(Exception):
    """Base class of every error this package raises on purpose."""


class InputFileError(InstructCellError):
    """The input file is missing, unreadable or not AnnData (.h5ad)."""


class InvalidValuesError(InstructCellError):
    """Expression values that the model cannot use (negative, non-finite, scaled)."""


class GeneOverlapError(InstructCellError):
    """Too few of the input's genes match the model's gene vocabulary."""


class LabelKeyError(InstructCellError):
    """A requested `obs` column (labels, conditions) is missing."""


class CheckpointError(InstructCellError):
    """A checkpoint directory is missing files, inconsistent or of an incompatible version."""


class InstructionError(InstructCellError):
    """An instruction or instruction file is malformed (unknown placeholder, bad JSON)."""


class DeviceError(InstructCellError):
    """The device asked for is not there (a GPU that torch cannot see)."""
