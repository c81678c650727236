"""Every error LoRA-WiSE raises on purpose: one root, and each error also the built-in it refines.

An error here means the input, the data, the environment or the Hub is not as needed, and its
message says what is wrong and what to do.  Each derives from :class:`LoRAWiSEError` *and* from
the matching built-in exception (as ``datasets.exceptions`` does), so ``except LoRAWiSEError``
catches all of them while ``except ValueError`` / ``KeyError`` / ``FileNotFoundError`` ... keep
working.  ``lora-wise`` prints a ``LoRAWiSEError`` as one ``error:`` line and exits with status 2;
any other exception is a bug and shows its traceback.

::

    LoRAWiSEError
    ├── OptionError (ValueError)              an option's value is not allowed (method, k, protocol, ...)
    ├── UnknownConfigError (KeyError)         no config of that name; the message suggests close ones
    ├── NotFoundError (FileNotFoundError)     a named file, folder or dataset does not exist
    ├── DatasetLayoutError (ValueError)       a dataset does not hold what was asked (config, split, step)
    │   └── PublishedLayoutError              the published release's files are not as documented
    ├── LoRAFormatError (ValueError)          not a readable LoRA; names the tensor at fault
    │   └── PickleRefusedError                a pickle checkpoint, refused unopened
    ├── IncompatibleLoRAError (ValueError)    a LoRA that cannot be compared with the references
    ├── DatasetSizeRecoveryInputError (ValueError)   predictions the metric cannot score
    ├── ResultsRecordError (ValueError)       a results record that is not valid JSON of its schema
    ├── TextPolicyError (ValueError)          a name, authors, link or reason outside the character policy
    ├── MethodError (ValueError)              a method that cannot be loaded or breaks the method interface
    ├── MissingDependencyError (ImportError)  an optional dependency is not installed
    ├── OutputError (OSError)                 a file or folder cannot be written: disk full, size limit,
    │                                         read-only, no permission, a file where a folder belongs
    ├── RepoIdError (ValueError)              not a Hub repo id (owner/name)
    ├── HubError (OSError)                    the Hub or the network to it failed
    │   ├── HubAuthError (PermissionError)    no token, or one without the rights needed
    │   ├── HubNotFoundError (FileNotFoundError)  no such repo, revision or file
    │   └── HubConnectionError (ConnectionError)  the Hub cannot be reached
    ├── MicroDatasetError (ValueError)        builder: images missing, too few or unreadable
    ├── BackboneError (FileNotFoundError)     builder: a backbone cannot be found or loaded
    ├── DeviceError (RuntimeError)            builder: the asked device is not available
    ├── BuildError (RuntimeError)             builder: the build cannot go on
    │   └── BuildStateError                   the output folder holds what this build must not touch
    ├── PushError (RuntimeError)              builder: the folder cannot be pushed as it is
    ├── SubmissionError (ValueError)          leaderboard: a submission cannot be scored
    ├── StoreError (RuntimeError)             leaderboard: the store cannot be read or written
    └── SpaceError (RuntimeError)             leaderboard: the Space cannot be assembled or deployed

:func:`os_failure` turns an ``OSError`` of the environment (errno ENOSPC, EDQUOT, EFBIG, EROFS,
EACCES, ...) into the :class:`OutputError` that says what to do; ``lora-wise`` does so for any
such error that reaches it, and the builder's writer with the fix a build needs.

The modules that raise an error also export it (``lora_wise.lora.LoRAFormatError``,
``lora_wise.leaderboard.submission.SubmissionError``, ...).
"""

from __future__ import annotations

import errno


class LoRAWiSEError(Exception):
    """The root of LoRA-WiSE's errors: something to fix in the input, the data or the setup, not a bug."""

    def __str__(self) -> str:  # the message itself, also for errors built on KeyError (which quotes it)
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


# --------------------------------------------------------------------------- options and config names

class OptionError(LoRAWiSEError, ValueError):
    """An option or argument has a value that is not allowed; the message lists the allowed ones."""


class UnknownConfigError(LoRAWiSEError, KeyError):
    """No benchmark config of that name; the message suggests close names."""


# --------------------------------------------------------------------------- files, datasets, LoRAs

class NotFoundError(LoRAWiSEError, FileNotFoundError):
    """A file, folder or dataset that was named does not exist; the message says where it looked."""


class DatasetLayoutError(LoRAWiSEError, ValueError):
    """The dataset exists but does not hold what was asked (config, split, step, columns)."""


class PublishedLayoutError(DatasetLayoutError):
    """Files said to be in the published release's layout are not (columns, names, labels, tensors)."""


class LoRAFormatError(LoRAWiSEError, ValueError):
    """The input is not a readable LoRA; the message names the tensor and the fix."""


class PickleRefusedError(LoRAFormatError):
    """A pickle-based checkpoint was given; it is refused, never unpickled."""


class IncompatibleLoRAError(LoRAWiSEError, ValueError):
    """The LoRA cannot be compared with the reference models; the message says what differs."""


class DatasetSizeRecoveryInputError(LoRAWiSEError, ValueError):
    """Predictions or references that cannot be scored; the message says which and why."""


class ResultsRecordError(LoRAWiSEError, ValueError):
    """A results record (``lora_wise.results``) that is not valid JSON of its schema; the message names the field."""


class TextPolicyError(LoRAWiSEError, ValueError):
    """Text a person gave (a name, authors, a link, a reason) breaks the character policy of ``lora_wise.text``."""


class MethodError(LoRAWiSEError, ValueError):
    """A method (``lora_wise.methods``) that cannot be loaded, or that breaks the interface (what ``predict`` returns)."""


class MissingDependencyError(LoRAWiSEError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class OutputError(LoRAWiSEError, OSError):
    """A file or folder cannot be written (no space, a file-size limit, read-only, no permission, a file in
    the way); the message names the path and what to do."""


#: errno -> (what happened, what to do) for the OSErrors that come from the environment, never from a bug.
_ENVIRONMENT = {
    errno.ENOSPC: ("no space left on the device", "free space there (or use another folder)"),
    errno.EDQUOT: ("disk quota exceeded", "free space within the quota (or use another folder)"),
    errno.EFBIG: ("a file grew past the file-size limit (`ulimit -f`) or the file system's",
                  "raise the limit (or write smaller files)"),
    errno.EROFS: ("the file system is read-only", "use a writable folder"),
    errno.EIO: ("an input/output error of the device", "check the disk"),
}
#: Errors of a named path the user chose: no permission, a file where a folder belongs, a name too long.
_PATH = {
    errno.EACCES: ("permission denied", "use a folder you may write to (or fix its permissions)"),
    errno.EPERM: ("operation not permitted", "use a folder you may write to (or fix its permissions)"),
    errno.ENOTDIR: ("a file stands where a folder is needed", "remove or rename that file, or use another path"),
    errno.EEXIST: ("a file stands where a folder is needed", "remove or rename that file, or use another path"),
    errno.EISDIR: ("a folder stands where a file is needed", "use another path"),
    errno.ENAMETOOLONG: ("the file name is too long", "use a shorter path"),
}


def os_failure(exc: BaseException, action: str, fix: str = "then run the command again") -> "OutputError | None":
    """The :class:`OutputError` an ``OSError`` of the environment means; None for any other exception.

    ``action`` completes "cannot ..." (e.g. ``"write the build into lora-wise/"``); ``fix`` is what to
    do once the cause is fixed (e.g. ``"then rerun the same command: finished models are kept"``).
    Disk full, quota, file-size limit, read-only and I/O errors count whatever the path; permission,
    a file in the way and a too-long name only with the path they concern (else they may be a bug).
    """
    if isinstance(exc, LoRAWiSEError) or not isinstance(exc, OSError):
        return None
    code = exc.errno
    known = _ENVIRONMENT.get(code) or (_PATH.get(code) if exc.filename is not None else None)
    if known is None:
        return None
    what, remedy = known
    shown = f"{exc.filename}: " if exc.filename is not None else ""
    return OutputError(f"cannot {action} ({shown}{what}, errno {errno.errorcode.get(code, code)}); {remedy}, {fix}")


# --------------------------------------------------------------------------- the Hub

class RepoIdError(LoRAWiSEError, ValueError):
    """Not a Hub repo id of the form ``owner/name``."""


class HubError(LoRAWiSEError, OSError):
    """The Hugging Face Hub refused or failed a request; the message names the fix."""


class HubAuthError(HubError, PermissionError):
    """No Hugging Face token, or one without the rights the request needs."""


class HubNotFoundError(HubError, FileNotFoundError):
    """The repo, revision or file does not exist on the Hub (or is private to others)."""


class HubConnectionError(HubError, ConnectionError):
    """The Hub cannot be reached (network down, or offline mode set)."""


# --------------------------------------------------------------------------- the builder

class MicroDatasetError(LoRAWiSEError, ValueError):
    """Images are missing, too few or unreadable; the message names the culprit and the fix."""


class BackboneError(LoRAWiSEError, FileNotFoundError):
    """A backbone cannot be found or loaded; the message says where it looked and what to do."""


class DeviceError(LoRAWiSEError, RuntimeError):
    """The device asked for (e.g. CUDA) is not available here."""


class BuildError(LoRAWiSEError, RuntimeError):
    """The build cannot go on (a cluster that cannot be reached, ...)."""


class BuildStateError(BuildError):
    """The output folder holds something this build must not touch or mix with."""


class PushError(LoRAWiSEError, RuntimeError):
    """The folder cannot be pushed as it is; the message says what to do."""


# --------------------------------------------------------------------------- the leaderboard

class SubmissionError(LoRAWiSEError, ValueError):
    """A submission that cannot be scored; the message says what is wrong and how to fix it."""


class StoreError(LoRAWiSEError, RuntimeError):
    """The store cannot be read or written; the message says which file or repo and what to do."""


class SpaceError(LoRAWiSEError, RuntimeError):
    """The Space cannot be assembled or deployed as asked; the message says what to do."""
