"""FormatError: the one error every reader of the .npdc format raises, from the framing down to a
single payload field, so a caller catches one type and the message always says where it arose."""

from npdc.errors import UserError


class FormatError(UserError):
    """A .npdc file or payload the format does not allow. The one-line message names the file
    (when known), the place (the file header, or section index, tag and byte offset; for a
    payload decoder, the payload kind) and the problem."""

    def __init__(self, problem, *, file=None, index=None, tag=None, offset=None, payload=None):
        self.problem = str(problem).replace("\n", " ")
        self.where = dict(file=file, index=index, tag=tag, offset=offset, payload=payload)
        parts = [] if file is None else [str(file)]
        if index is not None:
            parts.append(f"section {index}" + ("" if tag is None else f" {tag!r}")
                         + ("" if offset is None else f" at byte {offset}"))
        elif payload is None:
            parts.append("file header")
        parts += [] if payload is None else [f"{payload} payload"]
        super().__init__(": ".join(parts + [self.problem]))

    def at(self, file=None, index=None, tag=None, offset=None):
        """This error located in a file and section (for errors raised by a payload decoder)."""
        new = dict(file=file, index=index, tag=tag, offset=offset)
        return FormatError(self.problem, **{k: v if new.get(k) is None else new[k]
                                            for k, v in self.where.items()})
