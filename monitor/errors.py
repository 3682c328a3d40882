"""Every error attnmon raises on purpose.

    AttnmonError
    ├── ConfigError        a bad attnmon.yaml entry or environment override (field, value)
    ├── StoreError         the store is unreachable or its schema is not at head
    └── InvalidAttention   strict collectors only: a rejected vector (reason, row)

The CLI prints one line for these and exits 2; `--debug` shows the traceback.
"""

from __future__ import annotations


class AttnmonError(Exception):
    """Base class: the message is meant for a person, on one line."""


# A problem's value when nothing was given (an option left out, a variable unset): the
# message reads "--db-url: ...", not "--db-url=None: ...", as if None had been typed.
NOT_GIVEN = type("NotGiven", (), {"__repr__": lambda self: "NOT_GIVEN"})()


class ConfigError(AttnmonError):
    def __init__(self, problems: list[tuple[str, object, str]], source: str = "config"):
        # problems: (field path, offending value or NOT_GIVEN, what is wrong)
        self.problems = problems
        self.source = source
        parts = [f"{field}: {msg}" if value is NOT_GIVEN else f"{field}={value!r}: {msg}"
                 for field, value, msg in problems]
        super().__init__(f"{source}: " + "; ".join(parts))


class StoreError(AttnmonError):
    def __init__(self, message: str, url: str | None = None):
        self.url = url
        super().__init__(message)


class InvalidAttention(AttnmonError, ValueError):
    def __init__(self, reason: str, row: int | None, detail: str = ""):
        self.reason = reason
        self.row = row
        where = f"row {row}" if row is not None else "input"
        super().__init__(f"invalid attention ({reason}) at {where}" + (f": {detail}" if detail else ""))
