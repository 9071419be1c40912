"""Template families: YAML paraphrase variants rendered by sandboxed Jinja.

A family file (schema ``schemas/template_family.schema.json``)::

    family: existence_closed        # unique id
    task: existence                 # stored in qa.task
    generator: existence            # a generator of pipeline.qa.questions
    question_type: closed           # open | closed | multiple_choice
    answer_format: yes_no           # option_letter | yes_no | text | integer | box
    requires: [structure, plane]    # context fields the variants may use
    version: 1
    variants:
      - id: ex_v1
        text: "Is the {{ structure }} visible in this {{ plane }} slice?"

Templates are configuration a user may supply, so they are treated as
untrusted code, in three layers:

1. **Whitelist at load** (:func:`check_template`).  Every variant is parsed and
   its Jinja syntax tree walked; only what paraphrases need is accepted:
   text, ``{{ }}`` output, literals of bounded size, names declared in
   ``requires``, ``if``/``elif``/``else``, ``x if c else y``, comparisons and
   ``and``/``or``/``not``, ``+``/``-``/``~``, attribute and item access by names
   without ``_``, the filters of :data:`FILTERS`, the tests of :data:`TESTS`,
   and ``for`` loops over context variables, never nested.  Everything else —
   calls (``range()``, ``lipsum()``, ``cycler``, methods), macros and call
   blocks, ``set``/``with``, ``include``/``import``/``extends``, the ``*`` ``/``
   ``//`` ``%`` ``**`` operators, any name or attribute with ``_``, unknown
   filters — is rejected as :class:`ConfigError` ``"<file>: variants[N] (<id>):
   line L: <what> is not allowed in templates (<why>)"``, at load, hence by
   ``radvqa lint`` and before any build starts.  A template is never compiled
   without passing this check (:func:`render` re-checks families built by hand).
2. **Sandbox at render**: ``ImmutableSandboxedEnvironment`` with
   ``StrictUndefined``, no globals (no ``range``, ``lipsum``, ``dict``,
   ``cycler``, ``joiner``, ``namespace``), only the whitelisted filters and
   tests, every arithmetic operator intercepted (``*``, ``**`` … raise
   ``SecurityError``), and every filter or ``+`` result capped at
   :data:`MAX_RENDERED_CHARS`.
3. **Output bound**: a rendered text longer than :data:`MAX_RENDERED_CHARS` is
   :class:`CaseError` ``template.too_long`` naming file and variant.  Without a
   loop, output is bounded by the text and its capped expressions, so it is
   checked after rendering; a variant with a loop is streamed and stopped at the
   bound.  Any other failure is ``template.render_error``.

:func:`lint` additionally renders each variant against contexts from the
generators.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateError

from pipeline.errors import CaseError, ConfigError

#: Longest text a variant may render to (characters, before whitespace is collapsed).
MAX_RENDERED_CHARS = 2000
#: Longest string literal inside ``{{ }}`` / ``{% %}`` (template text itself is bounded by the schema).
MAX_LITERAL_CHARS = 200
#: Largest magnitude of a number literal.
MAX_LITERAL_NUMBER = 1_000_000
#: Most items in a list or tuple literal.
MAX_LITERAL_ITEMS = 32
#: ``for`` loops may not nest: with nesting, k loops over n items run n**k times.
MAX_LOOP_DEPTH = 1
#: Deepest expression (operators, filters, attribute chains) inside one tag.
MAX_EXPRESSION_DEPTH = 24

#: Filters a template may use, with the parameters it may pass them (positionally
#: or by keyword).  Each returns at most about its input's size — none repeats or
#: pads text (``center``, ``indent``, ``format``, ``wordwrap``), calls by name
#: (``map``, ``attr``, ``select``), reads attributes by name (``attribute=``)
#: or groups (``batch``, ``slice``, ``groupby``).
FILTERS: dict[str, tuple[str, ...]] = {
    "abs": (),
    "capitalize": (),
    "count": (),
    "d": ("default_value", "boolean"),
    "default": ("default_value", "boolean"),
    "first": (),
    "float": ("default",),
    "int": ("default", "base"),
    "join": ("d",),
    "last": (),
    "length": (),
    "list": (),
    "lower": (),
    "max": ("case_sensitive",),
    "min": ("case_sensitive",),
    "replace": ("old", "new", "count"),
    "reverse": (),
    "round": ("precision", "method"),
    "sort": ("reverse", "case_sensitive"),
    "string": (),
    "title": (),
    "trim": ("chars",),
    "truncate": ("length", "killwords", "end", "leeway"),
    "unique": ("case_sensitive",),
    "upper": (),
    "wordcount": (),
}
#: Filters that may stand between a ``for`` loop and the context variable it iterates.
LOOP_FILTERS = frozenset({"list", "reverse", "sort", "unique"})
#: ``is`` tests a template may use (each takes at most one argument).
TESTS = frozenset({
    "defined", "undefined", "none", "boolean", "true", "false", "integer", "float", "number",
    "string", "sequence", "mapping", "iterable", "lower", "upper", "even", "odd", "divisibleby",
    "eq", "equalto", "==", "ne", "!=", "lt", "lessthan", "<", "le", "<=", "gt", "greaterthan", ">",
    "ge", ">=", "in",
})
#: Names Jinja gives a meaning of its own; never context variables.
RESERVED_NAMES = frozenset({
    "self", "loop", "caller", "varargs", "kwargs", "super",
    "range", "lipsum", "dict", "cycler", "joiner", "namespace",
    "true", "false", "none", "True", "False", "None",
})

_OPERATORS = {"Mul": "*", "Div": "/", "FloorDiv": "//", "Mod": "%", "Pow": "**"}
_STATEMENTS = {
    "Macro": ("{% macro %}", "macros can call themselves without bound"),
    "CallBlock": ("{% call %}", "call blocks invoke macros"),
    "Assign": ("{% set %}", "templates only read the context they declare in requires"),
    "AssignBlock": ("{% set %}", "templates only read the context they declare in requires"),
    "With": ("{% with %}", "templates only read the context they declare in requires"),
    "Include": ("{% include %}", "templates cannot load other templates or files"),
    "Import": ("{% import %}", "templates cannot load other templates or files"),
    "FromImport": ("{% from ... import %}", "templates cannot load other templates or files"),
    "Extends": ("{% extends %}", "templates cannot load other templates or files"),
    "Block": ("{% block %}", "template inheritance is not used"),
    "FilterBlock": ("{% filter %}", "apply filters inline, as in {{ x|lower }}"),
    "Scope": ("{% autoescape %}", "questions are plain text"),
    "ScopedEvalContextModifier": ("{% autoescape %}", "questions are plain text"),
    "EvalContextModifier": ("{% autoescape %}", "questions are plain text"),
    "ExprStmt": ("{% do %}", "templates only produce text"),
}


class TemplateRejected(ValueError):
    """A template construct outside the whitelist, with its line in the template."""

    def __init__(self, lineno: int, what: str, why: str) -> None:
        super().__init__(f"line {lineno}: {what} is not allowed in templates ({why})")
        self.lineno, self.what, self.why = lineno, what, why


class OutputLimitExceeded(Exception):
    """A filter, operator or the whole template produced more than MAX_RENDERED_CHARS."""


def _line(node) -> int:
    """The node's line; Jinja leaves it unset on some wrappers ({% autoescape %})."""
    from jinja2 import nodes

    for n in (node, *node.find_all(nodes.Node)):
        if n.lineno is not None:
            return n.lineno
    return 1


def _describe(node, depth: int = 0) -> str:
    """Short source-like text of an expression, for messages."""
    from jinja2 import nodes

    if depth > 6:
        return "..."
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        return f"{_describe(node.node, depth + 1)}.{node.attr}"
    if isinstance(node, nodes.Getitem):
        return f"{_describe(node.node, depth + 1)}[...]"
    if isinstance(node, nodes.Call):
        return f"{_describe(node.node, depth + 1)}(...)"
    if isinstance(node, nodes.Filter):
        return f"{_describe(node.node, depth + 1)}|{node.name}"
    if isinstance(node, nodes.Const):
        text = repr(node.value)
        return text if len(text) <= 24 else text[:20] + "..." + text[-1]
    if isinstance(node, (nodes.List, nodes.Tuple)):
        return "a literal list"
    return f"a {type(node).__name__} expression"


class _Checker:
    """Walks a parsed template; raises :class:`TemplateRejected` at the first construct
    outside the whitelist (module docstring).  Source order, so the first problem in
    the text is the one reported."""

    def __init__(self, requires: Iterable[str]) -> None:
        self.requires = tuple(requires)

    # ---------------------------------------------------------------- statements

    def statements(self, body, scope: frozenset, loops: int) -> None:
        for node in body:
            self.statement(node, scope, loops)

    def statement(self, node, scope: frozenset, loops: int) -> None:
        from jinja2 import nodes

        if isinstance(node, nodes.Output):
            for child in node.nodes:
                self.expression(child, scope, 0)
        elif isinstance(node, nodes.If):
            self.expression(node.test, scope, 0)
            self.statements(node.body, scope, loops)
            for branch in node.elif_:
                self.statement(branch, scope, loops)
            self.statements(node.else_, scope, loops)
        elif isinstance(node, nodes.For):
            self.loop(node, scope, loops)
        else:
            name = type(node).__name__
            what, why = _STATEMENTS.get(name, (f"the {name} statement", "not in the template whitelist"))
            raise TemplateRejected(_line(node), what, why)

    def loop(self, node, scope: frozenset, loops: int) -> None:
        from jinja2 import nodes

        if node.recursive:
            raise TemplateRejected(node.lineno, "a recursive for loop", "loops may not call themselves")
        if loops + 1 > MAX_LOOP_DEPTH:
            raise TemplateRejected(
                node.lineno, "a for loop inside another for loop",
                f"loops may nest {MAX_LOOP_DEPTH} deep: k nested loops over n items run n**k times",
            )
        self.loop_iterable(node.iter, scope)
        self.expression(node.iter, scope, 0)
        targets = node.target.items if isinstance(node.target, nodes.Tuple) else [node.target]
        for target in targets:
            if not isinstance(target, nodes.Name):
                raise TemplateRejected(node.lineno, f"the loop target {_describe(target)}",
                                       "loop variables must be plain names")
            if target.name in RESERVED_NAMES:
                raise TemplateRejected(node.lineno, f"the loop variable {target.name!r}",
                                       "it is a name Jinja reserves")
        inner = scope | {t.name for t in targets}
        if node.test is not None:
            self.expression(node.test, inner, 0)
        self.statements(node.body, inner | {"loop"}, loops + 1)
        self.statements(node.else_, scope, loops)

    def loop_iterable(self, node, scope: frozenset) -> None:
        """A loop iterates a context variable (or an item of one), possibly sorted or
        de-duplicated — never a call, a literal or anything computed."""
        from jinja2 import nodes

        current = node
        while True:
            if isinstance(current, nodes.Filter) and current.name in LOOP_FILTERS:
                current = current.node
            elif isinstance(current, (nodes.Getattr, nodes.Getitem)):
                current = current.node
            elif isinstance(current, nodes.Name) and current.name != "loop":
                return
            else:
                raise TemplateRejected(
                    node.lineno, f"a for loop over {_describe(current)}",
                    "loops may only iterate over context variables declared in requires",
                )

    # --------------------------------------------------------------- expressions

    def expression(self, node, scope: frozenset, depth: int) -> None:
        from jinja2 import nodes

        if depth > MAX_EXPRESSION_DEPTH:
            raise TemplateRejected(node.lineno, f"an expression nested more than {MAX_EXPRESSION_DEPTH} deep",
                                   "paraphrases need no deep expressions")
        sub = functools.partial(self.expression, scope=scope, depth=depth + 1)
        kind = type(node).__name__
        if isinstance(node, nodes.TemplateData):
            return
        if isinstance(node, nodes.Const):
            self.constant(node)
        elif isinstance(node, nodes.Name):
            self.name(node, scope)
        elif isinstance(node, (nodes.List, nodes.Tuple)):
            if len(node.items) > MAX_LITERAL_ITEMS:
                raise TemplateRejected(node.lineno, f"a literal list of {len(node.items)} items",
                                       f"literal lists hold at most {MAX_LITERAL_ITEMS}")
            for item in node.items:
                sub(item)
        elif isinstance(node, nodes.Getattr):
            sub(node.node)
            self.member(node, node.attr, f"the attribute .{node.attr}")
        elif isinstance(node, nodes.Getitem):
            sub(node.node)
            if isinstance(node.arg, nodes.Slice):
                raise TemplateRejected(node.lineno, "slicing [a:b]", "not in the template whitelist")
            if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                self.member(node, node.arg.value, f"the item [{node.arg.value!r}]")
            sub(node.arg)
        elif isinstance(node, nodes.Filter):
            sub(node.node)
            self.filter(node, sub)
        elif isinstance(node, nodes.Test):
            sub(node.node)
            self.test(node, sub)
        elif isinstance(node, nodes.Call):
            raise TemplateRejected(node.lineno, f"the call {_describe(node)}",
                                   "templates cannot call functions or methods")
        elif isinstance(node, nodes.CondExpr):
            sub(node.test)
            sub(node.expr1)
            if node.expr2 is not None:
                sub(node.expr2)
        elif isinstance(node, nodes.Compare):
            sub(node.expr)
            for operand in node.ops:
                sub(operand.expr)
        elif isinstance(node, (nodes.And, nodes.Or, nodes.Add, nodes.Sub)):
            sub(node.left)
            sub(node.right)
        elif isinstance(node, (nodes.Not, nodes.Neg, nodes.Pos)):
            sub(node.node)
        elif isinstance(node, nodes.Concat):
            for part in node.nodes:
                sub(part)
        elif kind in _OPERATORS:
            raise TemplateRejected(node.lineno, f"the {_OPERATORS[kind]!r} operator",
                                   "it can build unbounded text or numbers")
        elif isinstance(node, nodes.Dict):
            raise TemplateRejected(node.lineno, "a literal dict", "not in the template whitelist")
        else:
            raise TemplateRejected(node.lineno, f"a {kind} expression", "not in the template whitelist")

    def constant(self, node) -> None:
        value = node.value
        if value is None or isinstance(value, bool):
            return
        if isinstance(value, str):
            if len(value) > MAX_LITERAL_CHARS:
                raise TemplateRejected(node.lineno, f"a string literal of {len(value)} characters",
                                       f"literals are limited to {MAX_LITERAL_CHARS}")
            return
        if isinstance(value, (int, float)):
            if not math.isfinite(value) or abs(value) > MAX_LITERAL_NUMBER:
                raise TemplateRejected(node.lineno, f"the number {value!r}",
                                       f"number literals are limited to +-{MAX_LITERAL_NUMBER:,}")
            return
        raise TemplateRejected(node.lineno, f"a literal of type {type(value).__name__}",
                               "not in the template whitelist")

    def name(self, node, scope: frozenset) -> None:
        if node.name in scope:
            return
        if node.name in RESERVED_NAMES:
            raise TemplateRejected(node.lineno, f"the name {node.name!r}",
                                   "Jinja reserves it; it reaches template internals or globals")
        if node.name not in self.requires:
            raise TemplateRejected(node.lineno, f"the variable {node.name!r}",
                                   f"not declared in requires {list(self.requires)}")

    @staticmethod
    def member(node, key: str, what: str) -> None:
        if "_" in key:
            raise TemplateRejected(node.lineno, what,
                                   "attribute and item names may not contain '_': "
                                   "__class__, __globals__, gi_frame reach Python internals")

    def filter(self, node, sub) -> None:
        from jinja2 import nodes

        params = FILTERS.get(node.name)
        if params is None:
            raise TemplateRejected(node.lineno, f"the filter {node.name!r}",
                                   f"allowed filters: {', '.join(sorted(FILTERS))}")
        self.arguments(node, f"the filter {node.name!r}", params, sub)
        if node.name == "replace":
            # Each replace can multiply the length by len(new) / len(old); literal
            # arguments keep that visible and the empty 'old' (insert everywhere) out.
            given = dict(zip(params, node.args)) | {k.key: k.value for k in node.kwargs}
            for param in ("old", "new"):
                arg = given.get(param)
                if not (isinstance(arg, nodes.Const) and isinstance(arg.value, str)):
                    raise TemplateRejected(node.lineno, f"replace without a literal {param!r} string",
                                           "replace takes literal strings only")
            if given["old"].value == "":
                raise TemplateRejected(node.lineno, "replace('', ...)",
                                       "replacing the empty string inserts text between every character")

    def test(self, node, sub) -> None:
        if node.name not in TESTS:
            raise TemplateRejected(node.lineno, f"the test 'is {node.name}'",
                                   f"allowed tests: {', '.join(sorted(TESTS))}")
        self.arguments(node, f"the test 'is {node.name}'", ("other",), sub, keywords=False)

    @staticmethod
    def arguments(node, what: str, params: tuple[str, ...], sub, keywords: bool = True) -> None:
        if node.dyn_args is not None or node.dyn_kwargs is not None:
            raise TemplateRejected(node.lineno, f"*args or **kwargs passed to {what}",
                                   "arguments must be written out")
        if len(node.args) > len(params):
            raise TemplateRejected(node.lineno, f"passing {len(node.args)} arguments to {what}",
                                   f"it takes at most {len(params)}: {', '.join(params) or 'none'}")
        for kw in node.kwargs:
            if not keywords or kw.key not in params[len(node.args):]:
                raise TemplateRejected(node.lineno, f"the argument {kw.key}= of {what}",
                                       f"allowed: {', '.join(params[len(node.args):]) or 'none'}")
        for arg in [*node.args, *(kw.value for kw in node.kwargs)]:
            sub(arg)


def check_template(text: str, requires: Iterable[str]):
    """Parse ``text`` and check it against the whitelist (module docstring).

    Returns the parsed ``jinja2.nodes.Template``.  Raises ``TemplateSyntaxError``
    for bad syntax and :class:`TemplateRejected` (``"line L: <what> is not allowed
    in templates (<why>)"``) for anything outside the whitelist, including a name
    not in ``requires`` wherever it appears (loops, conditions, filter arguments).
    """
    from jinja2 import TemplateSyntaxError

    try:
        tree = environment().parse(text)
    except RecursionError as err:
        raise TemplateSyntaxError("expression nested too deeply to parse", 1) from err
    _Checker(requires).statements(tree.body, frozenset(), 0)
    return tree


@dataclass(frozen=True)
class Variant:
    id: str
    text: str


@dataclass(frozen=True)
class TemplateFamily:
    """A validated family; holds template *text* only, so it pickles to workers."""

    family: str
    task: str
    generator: str
    question_type: str
    answer_format: str
    requires: tuple[str, ...]
    variants: tuple[Variant, ...]
    version: int
    source: str
    balance: str = "none"  # "answers" | "options" | "none" (see pipeline.qa.balance)

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError(f"{self.source}: family {self.family} has no variants")


def _check_size(value, what: str):
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_RENDERED_CHARS:
        raise OutputLimitExceeded(
            f"{what} produced {len(value):,} {'characters' if isinstance(value, str) else 'items'}, "
            f"more than the {MAX_RENDERED_CHARS:,} a template may render"
        )
    return value


def _bounded_filter(name: str, func):
    @functools.wraps(func)  # keeps jinja_pass_arg, so Jinja passes env/eval context as before
    def bounded(*args, **kwargs):
        return _check_size(func(*args, **kwargs), f"filter {name!r}")

    return bounded


@functools.lru_cache(maxsize=1)
def environment():
    """The sandboxed Jinja environment (one per process): no globals, whitelisted
    filters and tests only, arithmetic intercepted, results capped."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class TemplateEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

        def call_binop(self, context, operator, left, right):
            if operator not in ("+", "-"):
                raise SecurityError(f"the {operator!r} operator is disabled in templates")
            return _check_size(super().call_binop(context, operator, left, right), f"{operator!r}")

    env = TemplateEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
    env.globals.clear()
    env.filters = {name: _bounded_filter(name, env.filters[name]) for name in sorted(FILTERS)}
    env.tests = {name: env.tests[name] for name in sorted(TESTS)}
    return env


@functools.lru_cache(maxsize=4096)
def _compiled(text: str, requires: tuple[str, ...]):
    """``(template, has_loop, parts)`` for ``text`` after :func:`check_template`; nothing
    unchecked is ever compiled.  ``parts`` (see :func:`_plain_parts`) when the variant is
    only text and ``{{ name }}`` substitutions, else ``None``."""
    from jinja2 import nodes

    tree = check_template(text, requires)
    has_loop = next(tree.find_all(nodes.For), None) is not None
    return environment().from_string(tree), has_loop, _plain_parts(tree)


#: Render plain variants without Jinja's runtime (tests compare both paths).
PLAIN_FAST_PATH = True


def _plain_parts(tree) -> tuple[tuple[bool, str], ...] | None:
    """``((is_name, text_or_name), …)`` for a template that is nothing but literal text
    and bare ``{{ name }}`` substitutions — most paraphrases — else ``None``.  Such a
    template renders to the texts joined with ``str(value)`` of each name, exactly what
    Jinja's runtime produces (no autoescape, no finalize) at a fraction of its cost: a
    RadImageNet-VQA build renders 7.5M questions."""
    from jinja2 import nodes

    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return None
    parts = []
    for node in tree.body[0].nodes:
        if isinstance(node, nodes.TemplateData):
            parts.append((False, node.data))
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            parts.append((True, node.name))
        else:
            return None
    return tuple(parts)


def _compile_checked(text: str, requires: tuple[str, ...], where: str):
    from jinja2 import TemplateSyntaxError

    try:
        return _compiled(text, requires)
    except TemplateSyntaxError as err:
        raise ConfigError(f"{where}: line {err.lineno}: template syntax error: {err.message}") from err
    except TemplateRejected as err:
        raise ConfigError(f"{where}: {err}") from err


def load_family_file(path: Path) -> TemplateFamily:
    from pipeline.config.recipes import load_yaml
    from pipeline.config.validation import validate

    data = load_yaml(path)
    validate(data, "template_family", str(path))
    ids = [v["id"] for v in data["variants"]]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError(f"{path}: variants: duplicate ids {dup}")
    requires = tuple(data["requires"])
    for n, name in enumerate(requires):
        if name in RESERVED_NAMES:
            raise ConfigError(f"{path}: requires[{n}]: {name!r} is a name Jinja reserves; choose another")
    variants = []
    for n, v in enumerate(data["variants"]):
        _compile_checked(v["text"], requires, f"{path}: variants[{n}] ({v['id']})")
        variants.append(Variant(v["id"], v["text"]))
    return TemplateFamily(
        family=data["family"], task=data["task"], generator=data["generator"],
        question_type=data["question_type"], answer_format=data["answer_format"],
        requires=requires, variants=tuple(variants), version=int(data["version"]),
        source=str(path), balance=data.get("balance", "none"),
    )


def family_files(folder: Path) -> list[Path]:
    """The ``*.yaml`` files of a family folder, sorted.

    Each must resolve (symlinks followed) to a regular file inside ``folder``: a
    link from a recipe's template folder to a file elsewhere is refused.
    """
    root = folder.resolve()
    files = []
    for f in sorted(folder.glob("*.yaml")):
        try:
            real = f.resolve(strict=True)
        except (OSError, RuntimeError) as err:
            raise ConfigError(f"{f}: cannot resolve: {err}") from err
        if root not in real.parents:
            raise ConfigError(f"{f}: resolves to {real}, outside the template folder {root}")
        files.append(f)
    return files


def load_families(paths: str | Path | Iterable[str | Path]) -> dict[str, TemplateFamily]:
    """Families from files or folders (``*.yaml``, sorted); ids must be unique."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files.extend(family_files(p) if p.is_dir() else [p])
    families: dict[str, TemplateFamily] = {}
    from pipeline.qa.questions import GENERATORS

    for f in files:
        fam = load_family_file(f)
        if fam.family in families:
            raise ConfigError(f"{f}: family: {fam.family!r} already defined in {families[fam.family].source}")
        if fam.generator not in GENERATORS:
            raise ConfigError(f"{f}: generator: unknown {fam.generator!r}; known: {sorted(GENERATORS)}")
        families[fam.family] = fam
    if not families:
        raise ConfigError(f"templates: no *.yaml family files in {[str(p) for p in paths]}")
    return dict(sorted(families.items()))


def render(family: TemplateFamily, variant: Variant, context: Mapping) -> str:
    """Render one variant; whitespace collapsed.  Errors name file and variant.

    Raises :class:`CaseError` (stage ``qa``): ``template.rejected`` for a variant
    that fails :func:`check_template` (only families built without
    :func:`load_family_file`), ``template.too_long`` once the text passes
    :data:`MAX_RENDERED_CHARS` (a variant with a loop is streamed and stops there),
    ``template.render_error`` for anything else it raises, ``template.empty``.
    """
    try:
        template, has_loop, parts = _compiled(variant.text, family.requires)
    except (TemplateError, TemplateRejected) as err:
        raise CaseError("qa", "template.rejected", f"{family.source}: variant {variant.id}: {err}") from err
    try:
        if parts is not None and PLAIN_FAST_PATH:
            pieces = []
            for is_name, value in parts:
                if not is_name:
                    pieces.append(value)
                elif value in context:
                    pieces.append(str(context[value]))
                else:  # what StrictUndefined raises
                    from jinja2.exceptions import UndefinedError

                    raise UndefinedError(f"{value!r} is undefined")
            text = "".join(pieces)
            if len(text) > MAX_RENDERED_CHARS:
                raise OutputLimitExceeded(f"rendered text passed {MAX_RENDERED_CHARS:,} characters")
        elif has_loop:  # the only construct whose output the whitelist does not bound: stream
            pieces: list[str] = []
            size = 0
            for piece in template.generate(**context):
                size += len(piece)
                if size > MAX_RENDERED_CHARS:
                    raise OutputLimitExceeded(f"rendered text passed {MAX_RENDERED_CHARS:,} characters")
                pieces.append(piece)
            text = "".join(pieces)
        else:  # bounded by the text and its capped expressions: render (faster), then check
            text = template.render(**context)
            if len(text) > MAX_RENDERED_CHARS:
                raise OutputLimitExceeded(f"rendered text passed {MAX_RENDERED_CHARS:,} characters")
    except OutputLimitExceeded as err:
        raise CaseError("qa", "template.too_long", f"{family.source}: variant {variant.id}: {err}") from err
    except Exception as err:  # a template is user configuration: whatever it raises is its fault
        raise CaseError("qa", "template.render_error", f"{family.source}: variant {variant.id}: {type(err).__name__}: {err}") from err
    out = " ".join(text.split())
    if not out:
        raise CaseError("qa", "template.empty", f"{family.source}: variant {variant.id}: rendered empty")
    return out


def lint(families: Mapping[str, TemplateFamily], pools) -> list[str]:
    """Render every variant of every family against generator contexts; list problems.

    A generator that fails on the lint records is reported as a problem naming the
    family file, not raised.
    """
    from pipeline.qa.questions import DEFAULT_SETTINGS, GENERATORS, assemble, lint_records

    problems = []
    for fam in families.values():
        contexts = []
        try:
            for record in lint_records(pools, fam.generator):
                gen = _lint_rng(fam, record)
                made = GENERATORS[fam.generator](record, fam, pools, gen, DEFAULT_SETTINGS)
                for item in made if isinstance(made, list) else [made] if made is not None else []:
                    contexts.append(assemble(fam, item, gen)["context"])
        except Exception as err:
            problems.append(
                f"{fam.source}: generator {fam.generator} failed on the lint records: "
                f"{type(err).__name__}: {err}"
            )
            continue
        if not contexts:
            problems.append(f"{fam.source}: generator {fam.generator} produced no question on the lint records")
            continue
        provided = set(contexts[0])
        missing = sorted(set(fam.requires) - provided)
        if missing:
            problems.append(f"{fam.source}: requires: {missing} not provided by generator {fam.generator}")
            continue
        for variant in fam.variants:
            for context in contexts[:3]:
                try:
                    render(fam, variant, context)
                except CaseError as err:
                    problems.append(err.message)
                    break
    return problems


def _lint_rng(fam, record):
    from pipeline.core import keys

    return keys.KeyedStream(0, record["image_id"], f"lint/{fam.family}")
