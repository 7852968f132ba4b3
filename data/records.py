"""The canonical record every source adapter produces, and the error bad input raises."""
from dataclasses import dataclass, field

KINDS = ("number", "latex", "choice", "text")


class DataError(ValueError):
    """Bad input: the message names the file, line and field at fault."""

    def __init__(self, message, *, path=None, line=None, field=None, reason="bad_record"):
        where = ":".join(str(p) for p in (path, line) if p is not None)
        parts = [p for p in (where, f"field '{field}'" if field else None) if p]
        super().__init__(f"{', '.join(parts)}: {message}" if parts else message)
        self.message, self.path, self.line, self.field, self.reason = message, path, line, field, reason


@dataclass
class Record:
    prompt: str
    thinking: str
    answer: str
    id: str
    source: str  # "file:line" the record came from
    choices: list = field(default=None)
    kind: str = "text"

    def to_dict(self):
        d = {"id": self.id, "prompt": self.prompt, "thinking": self.thinking,
             "answer": self.answer, "kind": self.kind}
        if self.choices is not None:
            d["choices"] = list(self.choices)
        return d
