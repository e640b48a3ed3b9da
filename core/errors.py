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


class OutputError(WanportError):
    """An output file cannot be written: the folder is not writable, a name is too long for the
    file system, or the write failed (disk full, encoder error). The previous file of that name,
    if any, is left untouched."""

    exit_code = 7


class ResourceError(WanportError):
    """The machine is too small for the job (device or host memory ran out); says what it needs."""

    exit_code = 8


#: every exit code of the command line (README.md has the same table)
EXIT_CODES = {
    0: "success",
    1: "other wanport error",
    2: "recipe or command-line value invalid (ConfigError)",
    3: "checkpoint file missing, corrupt or not matching the model (CheckpointError)",
    4: "backend or op implementation unusable (BackendError)",
    5: "input (image, ...) unusable (InputError)",
    6: "dump folder missing, incomplete or not matching (DumpError)",
    7: "output file cannot be written (OutputError)",
    8: "out of memory, or predicted not to fit the device: the machine is too small for the job (ResourceError, PlanError)",
    130: "interrupted (Ctrl-C)",
    143: "terminated (SIGTERM); no partial output left behind",
}
