"""Errors that reach the user as one clear line."""


class OnnxPruneError(Exception):
    """A problem with the user's input or request; the CLI prints it as one line and exits 2."""


class VerificationError(OnnxPruneError):
    """The pruned model does not match the masked original: never written."""
