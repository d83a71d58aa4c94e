"""The exception types that mean "the input is wrong, and the user can fix it".

Every error the user can fix (a bad recipe key, a missing file, an unknown model reference, a
corpus too small to train on) derives from ``UserInputError``; the CLI maps it to exit code 2 and
the HTTP API to a 4xx. Anything else is a failure of ctxvec or its environment.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input that the message explains how to fix."""


class DataFormatError(UserInputError):
    """A data or evaluation file (STS, BEIR, WiC, plain text) that does not have the documented
    layout. Here, below every reader, because training reads STS files as well as evaluation."""
