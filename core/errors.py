"""Errors that reach the user as one clear message (no traceback) and a non-zero exit."""

from __future__ import annotations


class WanportError(Exception):
    """Base class: the message names the problem and the fix."""

    exit_code = 1


class ConfigError(WanportError):
    """A recipe or command-line value is invalid. Raised before anything heavy loads."""

    exit_code = 2


class CheckpointError(WanportError):
    """A checkpoint file is missing, corrupt or does not match the model. Names file and key."""

    exit_code = 3


class BackendError(WanportError):
    """A backend or op implementation cannot be used; lists what is available and why."""

    exit_code = 4


class InputError(WanportError):
    """A user-supplied input (image, prompt file, ...) cannot be used."""

    exit_code = 5


class DumpError(WanportError):
    """A dump folder (``wanport dump``) is missing, incomplete, corrupt, or does not match the
    dump it is compared with."""

    exit_code = 6


class ReloadRequired(ConfigError):
    """A ``Pipeline.generate`` argument would need other weights, another backend or another
    process layout: build a new pipeline instead. Raised before any compute; the pipeline stays usable."""

    exit_code = 2
