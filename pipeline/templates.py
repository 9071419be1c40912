"""Template families: YAML paraphrase variants rendered by sandboxed Jinja.

A family file (schema ``schemas/template_family.schema.json``)::

    family: existence_closed        # unique id
    task: existence                 # stored in qa.task
    generator: existence            # a generator of pipeline.questions
    question_type: closed           # open | closed | multiple_choice
    answer_format: yes_no           # option_letter | yes_no | text | integer | box
    requires: [structure, plane]    # context fields the variants may use
    version: 1
    variants:
      - id: ex_v1
        text: "Is the {{ structure }} visible in this {{ plane }} slice?"

Rendering uses ``jinja2.sandbox.ImmutableSandboxedEnvironment`` with
``StrictUndefined`` and no autoescaping: a variant that reaches Python
internals raises ``SecurityError``, an undefined variable ``UndefinedError``.
Every variant is compiled at load (syntax errors name file, variant and line)
and :func:`lint` renders each against contexts from the generators and checks
it uses only the fields it declares.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import CaseError, ConfigError


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

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError(f"{self.source}: family {self.family} has no variants")


@functools.lru_cache(maxsize=1)
def environment():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False
    )


@functools.lru_cache(maxsize=4096)
def _compiled(text: str):
    return environment().from_string(text)


def _compile_checked(text: str, where: str):
    from jinja2 import TemplateSyntaxError

    try:
        return _compiled(text)
    except TemplateSyntaxError as err:
        raise ConfigError(f"{where}: line {err.lineno}: template syntax error: {err.message}") from err


def declared_variables(text: str) -> set[str]:
    from jinja2 import meta

    return set(meta.find_undeclared_variables(environment().parse(text)))


def load_family_file(path: Path) -> TemplateFamily:
    from pipeline.recipes import load_yaml
    from pipeline.validation import validate

    data = load_yaml(path)
    validate(data, "template_family", str(path))
    ids = [v["id"] for v in data["variants"]]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError(f"{path}: variants: duplicate ids {dup}")
    variants = []
    for n, v in enumerate(data["variants"]):
        where = f"{path}: variants[{n}] ({v['id']})"
        _compile_checked(v["text"], where)
        extra = sorted(declared_variables(v["text"]) - set(data["requires"]))
        if extra:
            raise ConfigError(f"{where}: uses {extra}, not declared in requires {data['requires']}")
        variants.append(Variant(v["id"], v["text"]))
    return TemplateFamily(
        family=data["family"], task=data["task"], generator=data["generator"],
        question_type=data["question_type"], answer_format=data["answer_format"],
        requires=tuple(data["requires"]), variants=tuple(variants), version=int(data["version"]),
        source=str(path),
    )


def load_families(paths: str | Path | Iterable[str | Path]) -> dict[str, TemplateFamily]:
    """Families from files or folders (``*.yaml``, sorted); ids must be unique."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files.extend(sorted(p.glob("*.yaml")) if p.is_dir() else [p])
    families: dict[str, TemplateFamily] = {}
    from pipeline.questions import GENERATORS

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
    """Render one variant; whitespace collapsed.  Errors name file and variant."""
    from jinja2 import TemplateError

    try:
        text = _compiled(variant.text).render(**context)
    except TemplateError as err:
        raise CaseError(
            "qa", "template.render_error",
            f"{family.source}: variant {variant.id}: {type(err).__name__}: {err}",
        ) from err
    out = " ".join(text.split())
    if not out:
        raise CaseError("qa", "template.empty", f"{family.source}: variant {variant.id}: rendered empty")
    return out


def lint(families: Mapping[str, TemplateFamily], pools) -> list[str]:
    """Render every variant of every family against generator contexts; list problems."""
    from pipeline.questions import DEFAULT_SETTINGS, GENERATORS, assemble, lint_records

    problems = []
    records = lint_records(pools)
    for fam in families.values():
        contexts = []
        for record in records:
            gen = _lint_rng(fam, record)
            made = GENERATORS[fam.generator](record, fam, pools, gen, DEFAULT_SETTINGS)
            if made is not None:
                contexts.append(assemble(fam, made, gen)["context"])
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
    from pipeline import keys

    return keys.KeyedStream(0, record["image_id"], f"lint/{fam.family}")
