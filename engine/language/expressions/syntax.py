"""Parse a condition expression with Python's own parser, and say what to write instead.

`parse(text)` gives the `ast.Expression` of a `when` written as an expression
(`data.quantity <= data.minimum_quantity`), or an `ExpressionProblem` located
in the text. Python's parser gives exact spans, but its messages are for
programmers ("invalid syntax"), so the usual slips of a rule author (`&&`,
`||`, `!`, `=`, `===`, `{{ }}`, prose) are recognised in the tokens and named
with what to write instead. Nothing here evaluates anything.

An expression may span several lines (a YAML block scalar): it is parsed inside
parentheses of its own, so line breaks need no backslash, and a closing
bracket that would pair with those parentheses is refused.
"""

from __future__ import annotations

import ast
import io
import keyword
import re
import tokenize
import warnings
from dataclasses import dataclass

MAX_EXPRESSION_CHARS = 4000
MAX_DEPTH = 64

# Words that may stand next to another word in an expression (`x not in y`, `a if b else c`).
_JOINING_WORDS = frozenset(keyword.kwlist)
_OPENING = {"(": ")", "[": "]", "{": "}"}


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpressionProblem:
    """A problem in an expression: offsets `start`..`end` (characters), lines and columns 1-based."""

    message: str
    start: int
    end: int
    line: int
    column: int
    end_line: int
    end_column: int


class Lines:
    """Offsets of an expression's lines: converts Python's positions to character offsets."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts = [0, *(m.end() for m in re.finditer("\n", text))]
        self.ascii = text.isascii()  # then a byte column is a character column

    def offset(self, lineno: int, byte_column: int) -> int:
        """The character offset of `ast` position (1-based line, UTF-8 byte column)."""
        lineno = min(max(lineno, 1), len(self.starts))
        start = self.starts[lineno - 1]
        end = self.starts[lineno] if lineno < len(self.starts) else len(self.text)
        if self.ascii:
            return min(start + byte_column, end)
        line = self.text[start:end]
        return start + len(line.encode()[:byte_column].decode(errors="ignore"))

    def char_offset(self, lineno: int, column: int) -> int:
        """The character offset of (1-based line, 0-based character column)."""
        lineno = min(max(lineno, 1), len(self.starts))
        return min(self.starts[lineno - 1] + max(column, 0), len(self.text))

    def span(self, node: ast.AST) -> tuple[int, int]:
        """A node's (start, end) character offsets; the parser's wrapping line is taken off."""
        start = self.offset(node.lineno - 1, node.col_offset)  # type: ignore[attr-defined]
        end_line = node.end_lineno or node.lineno  # type: ignore[attr-defined]
        end = self.offset(end_line - 1, node.end_col_offset or 0)  # type: ignore[attr-defined]
        return start, max(end, start)

    def problem(self, message: str, start: int, end: int) -> ExpressionProblem:
        end = max(end, start)
        line, column = self.position(start)
        end_line, end_column = self.position(end)
        return ExpressionProblem(
            message=message,
            start=start,
            end=end,
            line=line,
            column=column,
            end_line=end_line,
            end_column=end_column,
        )

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of a character offset."""
        line = max(i for i, start in enumerate(self.starts) if start <= offset)
        return line + 1, offset - self.starts[line] + 1


def parse(text: str) -> ast.Expression | ExpressionProblem:
    """The expression's syntax tree, or the first problem found, with a hint."""
    lines = Lines(text)
    if not text.strip():
        return lines.problem(
            "expected a condition, found an empty text; write one such as data.quantity <= 5, "
            "or leave `when` out to fire on every event",
            0,
            len(text),
        )
    if len(text) > MAX_EXPRESSION_CHARS:
        return lines.problem(
            f"expected a condition of at most {MAX_EXPRESSION_CHARS} characters, found {len(text)}; "
            "split it into several rules",
            0,
            len(text),
        )
    try:
        with warnings.catch_warnings():  # `"a" is "a"` warns; such nodes are refused later anyway
            warnings.simplefilter("ignore")
            tree = ast.parse(f"(\n{text}\n)", mode="eval")
    except SyntaxError as exc:
        return _slip(text, lines) or _unmatched_closing(text, lines) or _syntax_problem(exc, text, lines)
    except (RecursionError, MemoryError, ValueError):  # ValueError: a NUL character
        return _slip(text, lines) or lines.problem(TOO_DEEP, 0, len(text))
    return _unmatched_closing(text, lines) or tree


TOO_DEEP = (
    f"expected at most {MAX_DEPTH} levels of nesting, found more; "
    "flatten the condition or split it into several rules"
)


def _tokens(text: str) -> list[tokenize.TokenInfo]:
    """The expression's tokens, positions relative to `text`; as many as can be read."""
    found: list[tokenize.TokenInfo] = []
    last_line = text.count("\n") + 1
    skipped = (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.ENDMARKER)
    try:
        for token in tokenize.generate_tokens(io.StringIO(f"(\n{text}\n)").readline):
            if 2 <= token.start[0] <= last_line + 1 and token.type not in skipped:
                start = (token.start[0] - 1, token.start[1])
                end = (token.end[0] - 1, token.end[1])
                found.append(token._replace(start=start, end=end))
    except (tokenize.TokenError, SyntaxError):
        pass
    return found


_SPECIAL = re.compile(r"[\"'#()\[\]{}]")


def _unmatched_closing(text: str, lines: Lines) -> ExpressionProblem | None:
    """A closing bracket with no opening one in `text` (it would close the parser's own)."""
    depth, at = 0, 0
    while (found := _SPECIAL.search(text, at)) is not None:
        at, char = found.start(), found.group()
        if char in "\"'":  # skip a text literal, triple-quoted or not; a backslash escapes
            quote = text[at : at + 3] if text[at : at + 3] in ('"""', "'''") else char
            at += len(quote)
            while at < len(text) and not text.startswith(quote, at):
                at += 2 if text[at] == "\\" else 1
            at += len(quote)
            continue
        if char == "#":
            newline = text.find("\n", at)
            at = len(text) if newline < 0 else newline
            continue
        depth += 1 if char in _OPENING else -1
        if depth < 0:
            return lines.problem(f"unmatched '{char}'; remove it or add the opening bracket", at, at + 1)
        at += 1
    return None


_SLIPS = {
    "&&": "write `and` instead of `&&`",
    "&": "write `and` instead of `&`",
    "||": "write `or` instead of `||`",
    "!": "write `not` instead of `!` (`not data.returned`); `!=` means not equal",
    "===": "write `==` instead of `===` (an expression has one equality, JsonLogic's ==)",
    "!==": "write `!=` instead of `!==` (an expression has one inequality, JsonLogic's !=)",
    "=": "write `==` to compare (a single `=` is not a comparison)",
    "=>": "write `>=` (greater than or equal)",
    "=<": "write `<=` (less than or equal)",
    "<>": "write `!=` (not equal)",
    "{{": "a condition is not a template: write the expression without {{ }}, such as data.quantity <= 5",
    "{%": "a condition is not a template: write the expression without {% %}, such as data.quantity <= 5",
}


def _slip(text: str, lines: Lines) -> ExpressionProblem | None:
    """A usual slip of a rule author, recognised in the tokens, with what to write instead."""
    tokens = _tokens(text)
    for index, token in enumerate(tokens):
        start = lines.char_offset(*token.start)
        end = lines.char_offset(*token.end)
        glued, glued_end = token.string, token.end
        for following in tokens[index + 1 : index + 3]:
            if following.start != glued_end or following.type not in (tokenize.OP, tokenize.ERRORTOKEN):
                break
            glued, glued_end = glued + following.string, following.end
        for slip in (glued[:3], glued[:2], token.string):
            if slip in _SLIPS and token.type in (tokenize.OP, tokenize.ERRORTOKEN):
                return lines.problem(f"unexpected '{slip}': {_SLIPS[slip]}", start, start + len(slip))
        lower = token.string.lower()
        if (
            token.type == tokenize.NAME
            and lower in ("and", "or", "not", "in", "is")
            and token.string != lower
        ):
            return lines.problem(
                f"unexpected '{token.string}': write `{token.string.lower()}` in small letters",
                start,
                end,
            )
        if index and _side_by_side(tokens[index - 1], token):
            first = lines.char_offset(*tokens[index - 1].start)
            words = tokens[index - 1].type == tokenize.NAME
            what = "words side by side are not a condition" if words else "two values side by side"
            return lines.problem(f"unexpected '{text[first:end]}': {what}; {_JOIN_HINT}", first, end)
    return None


_JOIN_HINT = 'compare with == != < <= > >= or in, join conditions with and / or, and quote text ("overdue")'


def _side_by_side(before: tokenize.TokenInfo, token: tokenize.TokenInfo) -> bool:
    """Prose or trailing text: a word right after a value (`quantity is low`, `5 items`)."""
    if token.type not in (tokenize.NAME, tokenize.NUMBER, tokenize.STRING) or token.string in _JOINING_WORDS:
        return False
    if token.type == tokenize.STRING and before.type == tokenize.STRING:
        return False  # "a" "b" is one text
    if before.type == tokenize.NAME:
        return before.string not in _JOINING_WORDS
    return before.type in (tokenize.NUMBER, tokenize.STRING) or before.string in (")", "]")


def _syntax_problem(exc: SyntaxError, text: str, lines: Lines) -> ExpressionProblem:
    """Python's syntax error, located in `text` and reworded for a rule author."""
    message = exc.msg or "invalid syntax"
    line = (exc.lineno or 2) - 1
    start = lines.char_offset(line, (exc.offset or 1) - 1)
    if exc.end_lineno and exc.end_offset and (exc.end_lineno, exc.end_offset) > (exc.lineno, exc.offset):
        end = lines.char_offset(exc.end_lineno - 1, exc.end_offset - 1)
    else:
        end = start + 1
    if line > len(lines.starts):  # at the wrapping line: the text ended too early
        start = end = len(text.rstrip())
        return lines.problem(
            "the condition ends too early; finish it (a comparison needs a value on each side)", start, end
        )
    end = min(end, len(text))
    found = text[start:end].strip() or text[start : start + 1]
    if "too many nested" in message:
        return lines.problem(TOO_DEEP, start, end)
    if message.startswith("unterminated string"):
        return lines.problem("a quoted text is never closed; add the closing quote", start, end)
    if "was never closed" in message:
        return lines.problem(f"{message}; add the closing bracket", start, start + 1)
    if "forgot a comma" in message:
        return lines.problem(
            f"unexpected '{found}': two values side by side; {_JOIN_HINT}",
            start,
            end,
        )
    if keyword.iskeyword(found) and text[:start].rstrip().endswith("."):
        return lines.problem(
            f"unexpected '{found}': a field named like a Python word is read with brackets, "
            f'such as data["{found}"]',
            start,
            end,
        )
    if message.startswith("invalid syntax") and _complete_before(text, start):
        return lines.problem(
            f"unexpected '{found}' after the end of the condition; join two conditions with "
            "and / or, or remove it",
            start,
            end,
        )
    if message.startswith("invalid syntax"):
        return lines.problem(
            f"unexpected '{found}'; write a condition such as data.quantity <= 5 or "
            'data.status == "overdue"',
            start,
            end,
        )
    return lines.problem(f"not a condition: {message.rstrip('.')}", start, end)


def _complete_before(text: str, offset: int) -> bool:
    before = text[:offset]
    if not before.strip():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(f"(\n{before}\n)", mode="eval")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return False
    return True
