"""A small, safe expression language for ``transform``: no ``eval``, no attribute access, no
loops; a tokenizer, a precedence-climbing parser, and closures compiled once.

    value > -40 and value < 125 and sensor != "spare"
    clamp(value * 1.8 + 32, -40, 257)
    not (unit == "F") or between(raw, 0, 4095)

Numbers, 'text' or "text", true/false, field names from the record (``value``, ``sensor``,
``unit``, ``ts``... and whatever else its data holds), ``+ - * / %``, comparisons
``< <= > >= == !=``, ``and or not``, parentheses and the functions in ``FUNCTIONS``. Types are
checked when the expression is compiled wherever they are known (``value > "a"`` is refused
then) and at run time for fields. Every error names the column it is about.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Env = Mapping[str, Any]
Fn = Callable[[Env], Any]

NUM, TEXT, BOOL, ANY = "number", "text", "true/false", "any"


class ExpressionError(ValueError):
    """An expression that does not parse or type-check; ``column`` is 1-based."""

    def __init__(self, message: str, source: str, column: int) -> None:
        self.message = message
        self.source = source
        self.column = column
        super().__init__(f"column {column}: {message}\n    {source}\n    {' ' * (column - 1)}^")


class EvalError(ValueError):
    """An expression that failed on one record (a missing field, a division by zero...)."""

    def __init__(self, message: str, column: int) -> None:
        self.message = message
        self.column = column
        super().__init__(f"column {column}: {message}")


@dataclass(frozen=True)
class _Token:
    kind: str  # num, text, name, op, end
    text: str
    column: int
    value: Any = None


_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<text>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<wrong>&&|\|\||\*\*|[\^&|\[\].])
      | (?P<op><=|>=|==|!=|[-+*/%<>(),])
      | (?P<lone>[!=])""",
    re.VERBOSE,
)
_INSTEAD = {"&&": "and", "||": "or", "!": "not", "=": "==", "**": "pow(x, y)", "^": "pow(x, y)",
            "&": "and", "|": "or"}


def _tokens(source: str) -> list[_Token]:
    out, pos = [], 0
    while pos < len(source):
        match = _TOKEN.match(source, pos)
        column = pos + 1
        if match is None:
            char = source[pos]
            what = "an unclosed text" if char in "'\"" else f"unexpected character {char!r}"
            raise ExpressionError(what, source, column)
        kind = match.lastgroup or ""
        text = match.group()
        pos = match.end()
        if kind == "space":
            continue
        if kind in ("wrong", "lone"):
            hint = f": use {_INSTEAD[text]}" if text in _INSTEAD else ""
            raise ExpressionError(f"{text!r} is not part of the language{hint}", source, column)
        value: Any = None
        if kind == "num":
            value = float(text)
        elif kind == "text":
            value = re.sub(r"\\(.)", r"\1", text[1:-1])
        out.append(_Token(kind, text, column, value))
    out.append(_Token("end", "", len(source) + 1))
    _bounded(out, source)
    return out


MAX_TOKENS = 500
MAX_NESTING = 40
"""An expression is compiled into closures that call each other as deep as it nests, and a long
chain (``1+1+...``) nests too: past these bounds it is a config error, never a RecursionError
at compile time or, worse, for every record at run time."""


def _bounded(tokens: list[_Token], source: str) -> None:
    if len(tokens) > MAX_TOKENS:
        column = tokens[MAX_TOKENS].column
        raise ExpressionError(f"longer than {MAX_TOKENS} words and symbols", source, column)
    depth = run = 0  # parentheses open, and prefix operators in a row (each nests as deep)
    for token in tokens:
        if token.text == "(":
            depth += 1
        elif token.text == ")":
            depth = max(0, depth - 1)
        run = run + 1 if token.text in ("-", "not", "(") else 0
        if depth + run > MAX_NESTING:
            raise ExpressionError(f"nested more than {MAX_NESTING} deep", source, token.column)


@dataclass(frozen=True)
class Compiled:
    """A compiled expression: ``fn(env)`` evaluates it; ``type`` is what it gives when known."""

    source: str
    fn: Fn
    type: str
    names: frozenset[str]

    def __call__(self, env: Env) -> Any:
        return self.fn(env)


def _num(fn: Fn, column: int, what: str) -> Fn:
    """Check at run time that a field-valued operand is a number."""

    def checked(env: Env) -> Any:
        value = fn(env)
        if type(value) is not float and type(value) is not int:
            raise EvalError(f"{what} needs a number, got {_describe(value)}", column)
        return value

    return checked


def _text(fn: Fn, column: int, what: str) -> Fn:
    """Check at run time that a field-valued operand is text."""

    def checked(env: Env) -> Any:
        value = fn(env)
        if type(value) is not str:
            raise EvalError(f"{what} needs text, got {_describe(value)}", column)
        return value

    return checked


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, str):
        return f"text {value!r}"
    return type(value).__name__ if value is not None else "nothing (null)"


def _safe_div(kind: str, column: int) -> Callable[[float, float], float]:
    op = operator.truediv if kind == "/" else operator.mod

    def divide(left: float, right: float) -> float:
        if right == 0:
            raise EvalError("division by zero", column)
        return float(op(left, right))

    return divide


def _finite(name: str, fn: Callable[..., float]) -> Callable[..., float]:
    def call(*args: float) -> float:
        try:
            result = fn(*args)
        except (ValueError, OverflowError):
            raise ValueError(f"{name}{tuple(args)} has no finite result") from None
        if isinstance(result, float) and not math.isfinite(result):
            raise ValueError(f"{name}{tuple(args)} has no finite result")
        return result

    return call


def _round(x: float, digits: float = 0) -> float:
    return float(round(x, int(digits)))


@dataclass(frozen=True)
class Function:
    """A function of the language: argument types, how many are required, whether more of the
    last type may follow, the result type and the implementation."""

    args: tuple[str, ...]
    required: int
    variadic: bool
    result: str
    impl: Callable[..., Any]

    def arg_type(self, index: int) -> str | None:
        if index < len(self.args):
            return self.args[index]
        return self.args[-1] if self.variadic else None


FUNCTIONS: dict[str, Function] = {
    "abs": Function((NUM,), 1, False, NUM, abs),
    "min": Function((NUM, NUM), 2, True, NUM, min),
    "max": Function((NUM, NUM), 2, True, NUM, max),
    "round": Function((NUM, NUM), 1, False, NUM, _round),
    "floor": Function((NUM,), 1, False, NUM, lambda x: float(math.floor(x))),
    "ceil": Function((NUM,), 1, False, NUM, lambda x: float(math.ceil(x))),
    "sqrt": Function((NUM,), 1, False, NUM, _finite("sqrt", math.sqrt)),
    "exp": Function((NUM,), 1, False, NUM, _finite("exp", math.exp)),
    "log": Function((NUM,), 1, False, NUM, _finite("log", math.log)),
    "log10": Function((NUM,), 1, False, NUM, _finite("log10", math.log10)),
    "pow": Function((NUM, NUM), 2, False, NUM, _finite("pow", math.pow)),
    "clamp": Function((NUM, NUM, NUM), 3, False, NUM, lambda x, lo, hi: min(max(x, lo), hi)),
    "between": Function((NUM, NUM, NUM), 3, False, BOOL, lambda x, lo, hi: lo <= x <= hi),
    "startswith": Function((TEXT, TEXT), 2, False, BOOL, lambda s, p: s.startswith(p)),
    "endswith": Function((TEXT, TEXT), 2, False, BOOL, lambda s, p: s.endswith(p)),
}
_ARITH: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul,
}
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}
_KEYWORDS = {"and", "or", "not", "true", "false"}
_ORDERED = {int: NUM, float: NUM, str: TEXT}  # what < and > accept: numbers, or texts


class _Parser:
    """Precedence climbing: or < and < not < comparison < + - < * / % < unary minus < atom."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokens(source)
        self.pos = 0
        self.names: set[str] = set()

    @property
    def token(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def error(self, message: str, token: _Token | None = None) -> ExpressionError:
        return ExpressionError(message, self.source, (token or self.token).column)

    def expect(self, text: str) -> _Token:
        if self.token.text != text:
            found = "the end" if self.token.kind == "end" else repr(self.token.text)
            raise self.error(f"expected {text!r}, found {found}")
        return self.take()

    def parse(self) -> tuple[Fn, str]:
        if self.token.kind == "end":
            raise self.error("the expression is empty")
        fn, kind = self.logic("or")
        if self.token.kind != "end":
            raise self.error(f"unexpected {self.token.text!r}: an operator is missing before it?")
        return fn, kind

    def logic(self, word: str) -> tuple[Fn, str]:
        lower: Callable[[], tuple[Fn, str]] = (
            (lambda: self.logic("and")) if word == "or" else self.negation
        )
        left, kind = lower()
        while self.token.text == word:
            token = self.take()
            right, right_kind = lower()
            left = self._logical(word, token, left, kind, right, right_kind)
            kind = BOOL
        return left, kind

    def _logical(self, word: str, token: _Token, left: Fn, lk: str, right: Fn, rk: str) -> Fn:
        for kind in (lk, rk):
            if kind not in (BOOL, ANY):
                raise self.error(f"{word!r} needs true/false on both sides, not a {kind}", token)
        left, right = self._bool(left, lk, token, word), self._bool(right, rk, token, word)
        if word == "and":
            return lambda env: left(env) and right(env)
        return lambda env: left(env) or right(env)

    def _bool(self, fn: Fn, kind: str, token: _Token, word: str) -> Fn:
        if kind == BOOL:
            return fn

        def checked(env: Env) -> bool:
            value = fn(env)
            if type(value) is not bool:
                raise EvalError(f"{word!r} needs true/false, got {_describe(value)}", token.column)
            return value

        return checked

    def negation(self) -> tuple[Fn, str]:
        if self.token.text == "not":
            token = self.take()
            inner, kind = self.negation()
            if kind not in (BOOL, ANY):
                raise self.error(f"'not' needs true/false, not a {kind}", token)
            checked = self._bool(inner, kind, token, "not")
            return (lambda env: not checked(env)), BOOL
        return self.comparison()

    def comparison(self) -> tuple[Fn, str]:
        left, lk = self.arithmetic(("+", "-"))
        if self.token.text not in _COMPARE:
            return left, lk
        token = self.take()
        right, rk = self.arithmetic(("+", "-"))
        if self.token.text in _COMPARE:
            raise self.error("comparisons do not chain: write `a < b and b < c`")
        op = _COMPARE[token.text]
        known = {lk, rk} - {ANY}
        if len(known) > 1:
            raise self.error(f"cannot compare a {lk} with a {rk}", token)
        if known == {BOOL} and token.text not in ("==", "!="):
            raise self.error("true/false can only be compared with == or !=", token)
        if ANY not in (lk, rk) or token.text in ("==", "!="):
            return (lambda env: op(left(env), right(env))), BOOL
        column = token.column

        def compare(env: Env) -> bool:
            a, b = left(env), right(env)
            kinds = {_ORDERED.get(type(a)), _ORDERED.get(type(b))}
            if len(kinds) != 1 or None in kinds:
                raise EvalError(f"cannot compare {_describe(a)} with {_describe(b)}", column)
            return bool(op(a, b))

        return compare, BOOL

    def arithmetic(self, ops: tuple[str, ...]) -> tuple[Fn, str]:
        lower: Callable[[], tuple[Fn, str]] = (
            (lambda: self.arithmetic(("*", "/", "%"))) if ops[0] == "+" else self.unary
        )
        left, lk = lower()
        while self.token.text in ops:
            token = self.take()
            right, rk = lower()
            left = self._binary(token, left, lk, right, rk)
            lk = NUM
        return left, lk

    def _binary(self, token: _Token, left: Fn, lk: str, right: Fn, rk: str) -> Fn:
        for kind in (lk, rk):
            if kind not in (NUM, ANY):
                raise self.error(f"{token.text!r} needs numbers, not a {kind}", token)
        if lk == ANY:
            left = _num(left, token.column, repr(token.text))
        if rk == ANY:
            right = _num(right, token.column, repr(token.text))
        if token.text in ("/", "%"):
            divide = _safe_div(token.text, token.column)
            return lambda env: divide(left(env), right(env))
        op = _ARITH[token.text]
        return lambda env: op(left(env), right(env))

    def unary(self) -> tuple[Fn, str]:
        if self.token.text in ("-", "+"):
            token = self.take()
            inner, kind = self.unary()
            if kind not in (NUM, ANY):
                raise self.error(f"{token.text!r} needs a number, not a {kind}", token)
            if kind == ANY:
                inner = _num(inner, token.column, repr(token.text))
            if token.text == "+":
                return inner, NUM
            return (lambda env: -inner(env)), NUM
        return self.atom()

    def atom(self) -> tuple[Fn, str]:
        token = self.token
        if token.kind in ("num", "text"):
            self.take()
            constant = token.value
            return (lambda env: constant), NUM if token.kind == "num" else TEXT
        if token.text == "(":
            self.take()
            inner = self.logic("or")
            self.expect(")")
            return inner
        if token.kind == "name":
            self.take()
            if token.text in ("true", "false"):
                flag = token.text == "true"
                return (lambda env: flag), BOOL
            if token.text in _KEYWORDS:
                raise self.error(f"expected a value, found {token.text!r}", token)
            if self.token.text == "(":
                return self.call(token)
            return self.field(token), ANY
        found = "the end" if token.kind == "end" else repr(token.text)
        raise self.error(f"expected a value, found {found}")

    def field(self, token: _Token) -> Fn:
        name, column = token.text, token.column
        self.names.add(name)

        def get(env: Env) -> Any:
            try:
                return env[name]
            except KeyError:
                raise EvalError(f"no field {name!r} in this record", column) from None

        return get

    def call(self, token: _Token) -> tuple[Fn, str]:
        if token.text not in FUNCTIONS:
            known = ", ".join(sorted(FUNCTIONS))
            raise self.error(f"no function {token.text!r} (there are: {known})", token)
        function = FUNCTIONS[token.text]
        self.expect("(")
        args: list[Fn] = []
        while self.token.text != ")":
            arg_token = self.token
            fn, kind = self.logic("or")
            want = function.arg_type(len(args))
            if want is None:
                raise self.error(
                    f"{token.text}() takes at most {len(function.args)} arguments", arg_token
                )
            if kind not in (want, ANY):
                raise self.error(f"{token.text}() needs a {want} here, not a {kind}", arg_token)
            if kind == ANY:
                fn = (_num if want == NUM else _text)(fn, arg_token.column, f"{token.text}()")
            args.append(fn)
            if self.token.text != ")":
                self.expect(",")
        self.take()
        if len(args) < function.required:
            raise self.error(
                f"{token.text}() needs {function.required} arguments, got {len(args)}", token
            )
        column, impl = token.column, function.impl

        def invoke(env: Env) -> Any:
            values = [arg(env) for arg in args]
            try:
                return impl(*values)
            except (TypeError, ValueError, OverflowError, AttributeError) as exc:
                raise EvalError(f"{token.text}(): {exc}", column) from None

        return invoke, function.result


def compile_expression(source: str, want: str | None = None) -> Compiled:
    """Parse and compile ``source``; ``want`` (``BOOL`` or ``NUM``) is the type it must give."""
    parser = _Parser(source)
    fn, kind = parser.parse()
    if want is not None and kind not in (want, ANY):
        hint = " (a condition such as `value > 3`)" if want == BOOL else ""
        raise ExpressionError(f"this gives a {kind}, but a {want} is needed here{hint}", source, 1)
    return Compiled(source, fn, kind, frozenset(parser.names))
