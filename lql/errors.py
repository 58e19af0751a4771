"""Every failure a user can cause is an :class:`LqlError` with a one-line message."""

from __future__ import annotations


class LqlError(Exception):
    """Base of all LQL errors: ``str(err)`` is a message a user can act on."""


class LqlSyntaxError(LqlError):
    """A statement that does not parse.

    ``line`` and ``column`` are 1-based; ``source_line`` is the offending line;
    ``expected`` names what would have been accepted (as a user reads it);
    ``suggestion`` is a did-you-mean keyword or ``None``.
    """

    def __init__(self, message: str, *, line: int = 1, column: int = 1, source_line: str = "",
                 expected: tuple[str, ...] = (), suggestion: str | None = None):
        self.short = message
        self.line = line
        self.column = column
        self.source_line = source_line
        self.expected = tuple(expected)
        self.suggestion = suggestion
        super().__init__(self._format())

    def _format(self) -> str:
        text = f"syntax error at line {self.line}, column {self.column}: {self.short}"
        if self.suggestion:
            text += f" (did you mean {self.suggestion}?)"
        if self.expected:
            text += "; expected " + ", ".join(self.expected)
        return text

    def pretty(self) -> str:
        """The message plus the source line with a caret under the offending column."""
        if not self.source_line:
            return str(self)
        caret = " " * (self.column - 1) + "^"
        return f"{self}\n  {self.source_line}\n  {caret}"


class NoVindexError(LqlError):
    def __init__(self, message: str = 'No vindex in use — run USE "path" first'):
        super().__init__(message)


class VindexError(LqlError):
    """A vindex file that is missing, truncated, corrupt or inconsistent."""

    def __init__(self, message: str, path: str | None = None):
        self.path = path
        super().__init__(message)


class MissingTensorError(LqlError):
    def __init__(self, keys, where: str = ""):
        self.keys = tuple(keys)
        shown = ", ".join(self.keys[:8]) + (" …" if len(self.keys) > 8 else "")
        super().__init__(f"missing tensor{'s' if len(self.keys) != 1 else ''} {shown}"
                         + (f" in {where}" if where else ""))


class UnclaimedTensorError(LqlError):
    """A source model has tensors its family neither reads nor ignores by an explicit rule
    (extracting would drop them silently)."""

    def __init__(self, keys, family: str, source: str = ""):
        self.keys = tuple(keys)
        self.family = family
        n = len(self.keys)
        super().__init__(f"source {source} has {n} tensor{'s' if n != 1 else ''} the {family} family "
                         f"does not read: {', '.join(self.keys)} — refusing to extract them away "
                         f"(is config.json's model_type right?)")


class UnsupportedArchitectureError(LqlError):
    def __init__(self, architecture: str, supported):
        self.architecture = architecture
        self.supported = tuple(supported)
        super().__init__(f"unsupported architecture {architecture!r}; supported: "
                         + ", ".join(self.supported))


class LevelError(LqlError):
    """An operation needs a vindex extracted at a higher level."""


class NotBuiltError(LqlError):
    """A statement whose capability is not built yet."""


class ExecutionError(LqlError):
    """Anything else a user caused: unknown entity, layer out of range, bad token, ..."""


class NonFiniteError(ExecutionError):
    """A forward pass met NaN or Inf: ``.layer`` (-1: the embedding, ``num_layers``: the
    logits) and ``.tensor`` (the weight holding non-finite values, when one does)."""

    def __init__(self, message: str, layer: int, tensor: str | None = None):
        super().__init__(message)
        self.layer = layer
        self.tensor = tensor
