"""Errors that reach the user as one clear line."""


class OnnxPruneError(Exception):
    """A problem with the user's input or request; the CLI prints it as one line and exits 2."""


class InternalError(OnnxPruneError):
    """onnxprune's own fault (a rewrite ONNX Runtime cannot run, a checker failure on what it wrote):
    one line, exit 1, nothing written."""


class VerificationError(OnnxPruneError):
    """The pruned model does not match the masked original: never written."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (ONNX Runtime's run on for pages), for one-line errors."""
    lines = str(e).strip().splitlines()
    return lines[0][:limit] if lines else type(e).__name__
