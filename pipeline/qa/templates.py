"""Template families: YAML paraphrase variants rendered by sandboxed Jinja.

A family file (schema ``schemas/template_family.schema.json``)::

    family: existence_closed        # unique id
    task: existence                 # stored in qa.task
    generator: existence            # a generator of pipeline.qa.generators
    question_type: closed           # open | closed | multiple_choice
    answer_format: yes_no           # option_letter | yes_no | text | integer | box
    requires: [structure, plane]    # context fields the variants may use
    version: 1
    variants:
      - id: ex_v1
        text: "Is the {{ structure }} visible in this {{ plane }} slice?"

Templates are configuration a user may supply, so they are treated as
untrusted code, in three layers: the whitelist checked at load and the sandboxed
environment (:mod:`pipeline.qa.sandbox`), and:

3. **Output bound**: a rendered text longer than :data:`MAX_RENDERED_CHARS` is
   :class:`CaseError` ``template.too_long`` naming file and variant.  Without a
   loop, output is bounded by the text and its capped expressions, so it is
   checked after rendering; a variant with a loop is streamed and stopped at the
   bound.  Any other failure is ``template.render_error``.

A family is loaded only through :func:`load_family_file` (every variant passes
:func:`~pipeline.qa.sandbox.check_template`); :func:`render` re-checks families built
by hand.  This module is a leaf of :mod:`pipeline.qa`: what it needs from the
generators (their names, to check a family's ``generator``) is passed in, and the
lint of families against the generators is :mod:`pipeline.qa.lint`.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateError, TemplateSyntaxError, nodes
from jinja2.exceptions import UndefinedError

from pipeline.config.checked import load_checked
from pipeline.errors import CaseError, ConfigError
from pipeline.qa.sandbox import (
    MAX_RENDERED_CHARS,
    RESERVED_NAMES,
    OutputLimitExceeded,
    TemplateRejected,
    check_template,
    environment,
)


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


@functools.lru_cache(maxsize=4096)
def _compiled(text: str, requires: tuple[str, ...]):
    """``(template, has_loop, parts)`` for ``text`` after :func:`check_template`; nothing
    unchecked is ever compiled.  ``parts`` (see :func:`_plain_parts`) when the variant is
    only text and ``{{ name }}`` substitutions, else ``None``; then ``template`` is ``None``
    too, the fast path needing none (:func:`_jinja` compiles it when asked): Jinja's code
    generation and ``compile()`` of radvuqa's 39 variants, all plain, cost 7 ms of CPU
    each launch (measured)."""
    tree = check_template(text, requires)
    has_loop = next(tree.find_all(nodes.For), None) is not None
    parts = _plain_parts(tree)
    return None if parts is not None else environment().from_string(tree), has_loop, parts


@functools.lru_cache(maxsize=4096)
def _jinja(text: str, requires: tuple[str, ...]):
    """The Jinja template of a variant :func:`_compiled` accepted (checked again here)."""
    return environment().from_string(check_template(text, requires))


#: Render plain variants without Jinja's runtime (tests compare both paths).
PLAIN_FAST_PATH = True


def _plain_parts(tree) -> tuple[tuple[bool, str], ...] | None:
    """``((is_name, text_or_name), …)`` for a template that is nothing but literal text
    and bare ``{{ name }}`` substitutions — most paraphrases — else ``None``.  Such a
    template renders to the texts joined with ``str(value)`` of each name, exactly what
    Jinja's runtime produces (no autoescape, no finalize) at a fraction of its cost: a
    RadImageNet-VQA build renders 7.5M questions."""
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
    try:
        return _compiled(text, requires)
    except TemplateSyntaxError as err:
        raise ConfigError(f"{where}: line {err.lineno}: template syntax error: {err.message}") from err
    except TemplateRejected as err:
        raise ConfigError(f"{where}: {err}") from err


def load_family_file(path: Path) -> TemplateFamily:
    data = load_checked(path, "template_family")  # parsed and validated unless unchanged
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


def load_families(paths: str | Path | Iterable[str | Path], *,
                  generators: Collection[str]) -> dict[str, TemplateFamily]:
    """Families from files or folders (``*.yaml``, sorted); ids must be unique and each
    family's ``generator`` one of ``generators`` (the names of
    :data:`pipeline.qa.generators.GENERATORS`)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files.extend(family_files(p) if p.is_dir() else [p])
    families: dict[str, TemplateFamily] = {}
    for f in files:
        fam = load_family_file(f)
        if fam.family in families:
            raise ConfigError(f"{f}: family: {fam.family!r} already defined in {families[fam.family].source}")
        if fam.generator not in generators:
            raise ConfigError(f"{f}: generator: unknown {fam.generator!r}; known: {sorted(generators)}")
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
    key = _memo_key(variant.text, family.requires, context) if parts is None else None
    out = _RENDERED.get(key) if key is not None else None
    if out is None:
        out = _render(family, variant, context, template, has_loop, parts)
        if key is not None:
            if len(_RENDERED) >= RENDERED_MAX:
                _RENDERED.clear()
            _RENDERED[key] = out
    return out


#: Texts of Jinja-rendered variants (those with tags) by variant and context: the same
#: label asked the same way renders once per process, not once per image.
_RENDERED: dict[tuple, str] = {}
RENDERED_MAX = 1 << 16
_ATOMIC = frozenset({str, bool, int, float, type(None)})


def _memo_key(text: str, requires: tuple, context: Mapping) -> tuple | None:
    """The memo key of a render, or ``None`` when a context value is not a plain scalar.
    Types are part of it: ``True`` and ``1`` are equal keys but render differently."""
    items = []
    for k, v in context.items():
        if type(v) not in _ATOMIC:
            return None
        items.append((k, type(v), v))
    return text, requires, tuple(items)


def _render(family, variant, context, template, has_loop, parts) -> str:
    try:
        if template is None and not (parts is not None and PLAIN_FAST_PATH):
            template = _jinja(variant.text, family.requires)
        if parts is not None and PLAIN_FAST_PATH:
            pieces = []
            for is_name, value in parts:
                if not is_name:
                    pieces.append(value)
                elif value in context:
                    pieces.append(str(context[value]))
                else:  # what StrictUndefined raises
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

