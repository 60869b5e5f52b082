"""The Jinja2 sandbox templates run in, with every runaway limit enforced while they run.

On top of Jinja's immutable sandbox:

- payload fields before attributes (`data.items` is the field), strict undefined;
- every filter, call and arithmetic operator goes through a hook that counts a
  step, refuses an operation whose result would be over the limits before it
  runs (engine.language.templates.costs), and checks the result of the others;
- the generated code counts every loop turn, every piece of output (of the
  template, macros and blocks alike) and every `~` join, through
  `GuardedCodeGenerator`, Jinja's documented hook for changing compiled code;
- only the methods listed in engine.language.templates.costs can be called.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NoReturn

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import BlockReference, LoopContext, Macro, TemplateReference
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg

from engine.language.templates import budget as template_budget
from engine.language.templates import costs as sandbox_costs
from engine.language.templates.budget import LimitExceeded, check_text, check_value

Escape = Callable[[str], str]


class MissingField(jinja2.UndefinedError):
    """A template read a name or field that is not there."""

    def __init__(self, owner: Any, name: str) -> None:
        super().__init__(name)
        self.owner = owner
        self.name = name


class StrictField(jinja2.StrictUndefined):
    """Strict undefined that remembers which object lacked which field."""

    __slots__ = ()

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> NoReturn:
        if self._undefined_hint:  # the sandbox refused an unsafe attribute
            raise SecurityError(self._undefined_hint)
        raise MissingField(self._undefined_obj, str(self._undefined_name))

    __str__ = __iter__ = __len__ = __bool__ = __eq__ = __ne__ = __hash__ = _fail_with_undefined_error
    __contains__ = _fail_with_undefined_error


# Jinja binds arithmetic, comparisons, indexing and calls to its own `_fail_with_undefined_error`
# when `Undefined` is defined, so the override above would not reach them: a missing field in
# `{{ data.minimum_quantity * 2 - data.quantity }}` would fail as a bare UndefinedError.
for _name, _method in vars(jinja2.Undefined).items():
    if _method is jinja2.Undefined._fail_with_undefined_error and _name != "_fail_with_undefined_error":
        setattr(StrictField, _name, StrictField._fail_with_undefined_error)


def budgeted_range(*args: int) -> range:
    values = range(*args)
    template_budget.current().take_range(len(values))
    return values


TEMPLATE_GLOBALS: dict[str, Any] = {"range": budgeted_range, "dict": dict}
_UNDEFINED_FILTERS = frozenset({"default", "d"})  # the filters made for a value that is not there
_PADDING_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs", "format", "format_map"})
_JINJA_CALLABLES = (Macro, LoopContext, BlockReference, TemplateReference, jinja2.Undefined)


class GuardedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with loop turns, output and `~` going through the environment."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Jinja allows no new node types: a loop's iterable is wrapped in this existing one,
        # and these instances compile to `environment.iterate(...)` (one step per turn).
        self._counted: set[int] = set()

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        counted = nodes.MarkSafeIfAutoescape(node.iter, lineno=node.lineno)
        self._counted.add(id(counted))
        node = copy.copy(node)
        node.iter = counted
        super().visit_For(node, frame)

    def visit_MarkSafeIfAutoescape(self, node: nodes.MarkSafeIfAutoescape, frame: Frame) -> None:
        if id(node) not in self._counted:
            super().visit_MarkSafeIfAutoescape(node, frame)
            return
        self.write("environment.iterate(")
        self.visit(node.expr, frame)
        self.write(")")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile or frame.eval_ctx.autoescape:
            super().visit_Concat(node, frame)
            return
        self.write("environment.join_texts((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")

    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        self.write("environment.emit(")
        super()._output_child_pre(node, frame, finalize)
        self.write("environment.shown(")

    def _output_child_post(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        self.write(")")
        super()._output_child_post(node, frame, finalize)
        self.write(")")

    def _output_const_repr(self, group: Iterable[Any]) -> str:
        return f"environment.emit({super()._output_const_repr(group)})"


def _guard_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that counts a step, estimates its result first when it can amplify, checks it after."""
    estimate = sandbox_costs.FILTER_ESTIMATES.get(name)
    signature = _call_signature(function)

    passed = 0 if _PassArg.from_obj(function) is None else 1
    reads_undefined = name in _UNDEFINED_FILTERS

    @functools.wraps(function)  # keeps Jinja's pass_environment/pass_eval_context marker
    def guarded(*args: Any, **kwargs: Any) -> Any:
        template_budget.current().spend()
        if not reads_undefined:  # `| round` of a missing field names the field
            for value in (*args[passed:], *kwargs.values()):
                if isinstance(value, StrictField):
                    value._fail_with_undefined_error()
        args = (*args[:passed], *_read_iterators(args[passed:], f"the {name} filter"))
        if estimate is not None:
            bound = signature.bind(*args, **kwargs)
            estimate(bound.arguments)
            args, kwargs = bound.args, bound.kwargs
        return _checked_result(function(*args, **kwargs), f"the {name} filter")

    return guarded


def _call_signature(function: Callable[..., Any]) -> inspect.Signature:
    """The filter's signature as Jinja calls it: with the argument its pass_* marker adds.

    Jinja's async-aware filters (`list`, `slice`) are marked pass_eval_context while
    the function they wrap, whose signature inspect reports, takes no such argument.
    """
    signature = inspect.signature(function)
    first = next(iter(signature.parameters), "")
    if _PassArg.from_obj(function) is None or first in ("eval_ctx", "environment", "context"):
        return signature
    passed = inspect.Parameter("passed", inspect.Parameter.POSITIONAL_ONLY)
    return signature.replace(parameters=[passed, *signature.parameters.values()])


def _read_iterators(values: tuple[Any, ...], what: str) -> tuple[Any, ...]:
    """Iterators among `values` read into lists within the limits: nothing reads one unchecked."""
    if not any(isinstance(value, Iterator) for value in values):
        return values
    return tuple(
        sandbox_costs.read_within_limits(value, what) if isinstance(value, Iterator) else value
        for value in values
    )


def _checked_result(result: Any, what: str) -> Any:
    if isinstance(result, str | list | tuple | dict | int) and not isinstance(result, bool):
        check_value(result, what)
    return result


class FieldEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox: payload fields before attributes, and every runaway limit held while rendering."""

    code_generator_class = GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, finalize: Escape | None = None) -> None:
        super().__init__(
            undefined=StrictField,
            autoescape=False,
            finalize=(lambda value: finalize(str(value))) if finalize else None,
        )
        self.globals = dict(TEMPLATE_GLOBALS)
        self.filters = {name: _guard_filter(name, function) for name, function in self.filters.items()}

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if super().wrap_str_format(value) is None:
            return None
        raise SecurityError("str.format() is not available in templates; join text with ~")

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, jinja2.Undefined):  # report the first missing piece of a path
            obj._fail_with_undefined_error()
        if isinstance(obj, Mapping):
            if attribute in obj:
                return obj[attribute]
            return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr in _PADDING_METHODS:
            return False
        return bool(super().is_safe_attribute(obj, attr, value))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = template_budget.current()
        budget.spend()
        if not __self.is_safe_callable(__obj):
            raise SecurityError(f"{__obj!r} is not safely callable")
        if isinstance(__obj, Macro | LoopContext | BlockReference):
            if isinstance(__obj, LoopContext) and args:  # a recursive loop's next level
                args = (__self.iterate(args[0]), *args[1:])
            if budget.depth >= template_budget.MAX_CALL_DEPTH:
                raise LimitExceeded(
                    f"calls nested more than {template_budget.MAX_CALL_DEPTH} deep (macros, blocks and "
                    "recursive loops), the limit; a macro that calls itself without end?"
                )
            budget.depth += 1
            try:
                return _checked_result(__context.call(__obj, *args, **kwargs), "the macro")
            finally:
                budget.depth -= 1
        _refuse_unlisted(__obj, args, kwargs)
        args = _read_iterators(args, "the call")
        return _checked_result(__context.call(__obj, *args, **kwargs), "the call")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        template_budget.current().spend()
        if operator == "*":
            sandbox_costs.check_repeat(left, right)
            return left * right
        if operator == "**":
            sandbox_costs.check_power(left, right)
            return left**right
        if operator == "+":
            sandbox_costs.check_add(left, right)
            return _checked_result(left + right, "adding")
        if isinstance(left, str):
            sandbox_costs.check_printf(left, right)
            return _checked_result(left % right, "the % format")
        return left % right

    def iterate(self, iterable: Any) -> Iterator[Any]:
        """A loop's items, one step each."""
        budget = template_budget.current()
        for item in iterable:
            budget.spend()
            yield item

    def shown(self, value: Any) -> Any:
        """A value about to be written out, refused before it is turned into text if too big."""
        if not isinstance(value, str):
            check_value(value, "writing the value out")
        return value

    def emit(self, text: str) -> str:
        return template_budget.current().emit(text)

    def join_texts(self, values: tuple[Any, ...]) -> str:
        """`a ~ b ~ c`, refused before joining when the text would be too long."""
        template_budget.current().spend()
        check_text(sum(map(sandbox_costs.text_length, values)), "joining texts with ~")
        texts = [value if isinstance(value, str) else str(value) for value in values]
        check_text(sum(map(len, texts)), "joining texts with ~")
        return "".join(texts)


def _refuse_unlisted(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse a call to anything but the template globals, Jinja's own objects and the listed methods."""
    if isinstance(function, _JINJA_CALLABLES) or any(
        function is value for value in TEMPLATE_GLOBALS.values()
    ):
        return
    owner, name = getattr(function, "__self__", None), getattr(function, "__name__", "")
    if isinstance(owner, _JINJA_CALLABLES):
        return
    allowed, estimate = sandbox_costs.method_estimate(owner, name)
    if not allowed:
        shown = f"{type(owner).__name__}.{name}()" if owner is not None else repr(function)[:80]
        raise SecurityError(f"{shown} is not available in templates")
    if estimate is not None:
        estimate(owner, args, kwargs)


_plain = FieldEnvironment()
_escaping_envs: dict[Escape, FieldEnvironment] = {}


def environment(escape: Escape | None = None) -> FieldEnvironment:
    if escape is None:
        return _plain
    if escape not in _escaping_envs:
        _escaping_envs[escape] = FieldEnvironment(finalize=escape)
    return _escaping_envs[escape]
