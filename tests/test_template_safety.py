"""Template and config safety: the Jinja whitelist at load, the sandbox and the output
bound at render, safe YAML, schema errors that name file and path, and recipes that
cannot reach outside their folder."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.config.recipes import (
    builtin_recipes,
    load_recipe,
    pool_paths,
    resolve_entry,
    template_paths,
)
from pipeline.config.resources import resource_dir
from pipeline.config.yaml_files import MAX_CONFIG_BYTES, load_yaml
from pipeline.errors import CaseError, ConfigError
from pipeline.qa.generators import GENERATORS
from pipeline.qa.label_pools import load_label_pools
from pipeline.qa.pools import load_pools
from pipeline.qa.sandbox import (
    FILTERS,
    MAX_RENDERED_CHARS,
    TESTS,
    OutputLimitExceeded,
    environment,
)
from pipeline.qa.templates import (
    TemplateFamily,
    Variant,
    load_families,
    load_family_file,
    render,
)

REQUIRES = ["structure", "plane", "options"]
PROBE = "probe_v2"  # the variant under test is variants[1]


def _family_data(text: str, requires=REQUIRES) -> dict:
    return {
        "family": "probe", "task": "anatomy", "generator": "grounding", "question_type": "open",
        "answer_format": "box", "requires": list(requires), "version": 1,
        "variants": [
            {"id": "probe_v1", "text": "Where is it?"},
            {"id": PROBE, "text": text},
            {"id": "probe_v3", "text": "Locate it."},
        ],
    }


def _write_family(folder: Path, text: str, requires=REQUIRES, name: str = "fam.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(_family_data(text, requires), sort_keys=False, width=1000))
    return path


# ------------------------------------------------------------------ the whitelist

REJECTED = [
    # reaching Python internals
    ("dunder-mro", "{{ ''.__class__.__mro__ }}",
     "line 1: the attribute .__class__ is not allowed in templates (attribute and item names may not contain '_'"),
    ("self-init", "{{ self.__init__ }}",
     "line 1: the name 'self' is not allowed in templates (Jinja reserves it"),
    ("cycler-globals", "{{ cycler.__init__.__globals__ }}",
     "line 1: the name 'cycler' is not allowed in templates (Jinja reserves it"),
    ("context-dunder-globals", "{{ structure.__init__.__globals__ }}",
     "line 1: the attribute .__init__ is not allowed in templates"),
    ("dunder-item", "{{ structure['__class__'] }}",
     "line 1: the item ['__class__'] is not allowed in templates (attribute and item names may not contain '_'"),
    ("frame-attribute", "{{ options.gi_frame }}", "line 1: the attribute .gi_frame is not allowed"),
    ("attr-filter", "{{ structure|attr('__class__') }}", "line 1: the filter 'attr' is not allowed in templates"),
    ("join-attribute", "{{ options|join(', ', attribute='__class__') }}",
     "line 1: the argument attribute= of the filter 'join' is not allowed in templates (allowed: none)"),
    ("sort-positional-attribute", "{{ options|sort(false, false, '__class__') }}",
     "line 1: passing 3 arguments to the filter 'sort' is not allowed in templates (it takes at most 2"),
    # calls
    ("method-call", "{{ structure.upper() }}",
     "line 1: the call structure.upper(...) is not allowed in templates (templates cannot call functions"),
    ("lipsum", "{{ lipsum(1000) }}", "line 1: the call lipsum(...) is not allowed in templates"),
    ("namespace", "{{ namespace(a=1) }}", "line 1: the call namespace(...) is not allowed"),
    ("dict-call", "{{ dict(a=1) }}", "line 1: the call dict(...) is not allowed"),
    ("joiner", "{{ joiner(',') }}", "line 1: the call joiner(...) is not allowed"),
    ("bare-range", "{{ range }}", "line 1: the name 'range' is not allowed in templates (Jinja reserves it"),
    # unbounded work or output
    ("range-loop", "{% for i in range(10**9) %}x{% endfor %}",
     "line 1: a for loop over range(...) is not allowed in templates (loops may only iterate over context variables"),
    ("literal-loop", "{% for i in [1, 2, 3] %}x{% endfor %}",
     "line 1: a for loop over a literal list is not allowed in templates"),
    ("nested-loops", "{% for a in options %}\n{% for b in options %}{{ a }}{{ b }}{% endfor %}{% endfor %}",
     "line 2: a for loop inside another for loop is not allowed in templates (loops may nest 1 deep"),
    ("recursive-loop", "{% for o in options recursive %}{{ loop(o) }}{% endfor %}",
     "line 1: a recursive for loop is not allowed in templates"),
    ("string-times-huge", "{{ 'x' * 10**9 }}",
     "line 1: the '*' operator is not allowed in templates (it can build unbounded text or numbers)"),
    ("power", "{{ 10 ** 9 }}", "line 1: the '**' operator is not allowed in templates"),
    ("percent-format", "{{ '%0999999999d' % 1 }}", "line 1: the '%' operator is not allowed in templates"),
    ("floor-division", "{{ 7 // 2 }}", "line 1: the '//' operator is not allowed in templates"),
    ("center-huge", "{{ 'a'|center(10**9) }}",
     "line 1: the filter 'center' is not allowed in templates (allowed filters: abs, capitalize"),
    ("format-filter", "{{ '%s'|format(structure) }}", "line 1: the filter 'format' is not allowed"),
    ("indent-filter", "{{ structure|indent(1000000) }}", "line 1: the filter 'indent' is not allowed"),
    ("replace-empty", "{{ structure|replace('', 'xxxxxxxx') }}",
     "line 1: replace('', ...) is not allowed in templates (replacing the empty string"),
    ("replace-variable", "{{ structure|replace(plane, structure) }}",
     "line 1: replace without a literal 'old' string is not allowed in templates"),
    ("huge-number", "{{ structure|truncate(1000000000) }}",
     "line 1: the number 1000000000 is not allowed in templates (number literals are limited to +-1,000,000)"),
    ("long-literal", "{{ '" + "x" * 300 + "' }}",
     "line 1: a string literal of 300 characters is not allowed in templates (literals are limited to 200)"),
    ("deep-expression", "{{ structure" + "|lower" * 40 + " }}",
     "line 1: an expression nested more than 24 deep is not allowed in templates"),
    ("macro-recursion", "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
     "line 1: {% macro %} is not allowed in templates (macros can call themselves without bound)"),
    ("call-block", "{% call structure() %}x{% endcall %}", "line 1: {% call %} is not allowed in templates"),
    # state and other files
    ("set", "{% set s = structure %}{{ s }}",
     "line 1: {% set %} is not allowed in templates (templates only read the context they declare"),
    ("set-block", "{% set s %}x{% endset %}{{ s }}", "line 1: {% set %} is not allowed in templates"),
    ("with", "{% with s = structure %}{{ s }}{% endwith %}", "line 1: {% with %} is not allowed"),
    ("include", "{% include 'fam.yaml' %}",
     "line 1: {% include %} is not allowed in templates (templates cannot load other templates or files)"),
    ("import", "{% import 'fam.yaml' as f %}", "line 1: {% import %} is not allowed in templates"),
    ("extends", "{% extends 'fam.yaml' %}", "line 1: {% extends %} is not allowed in templates"),
    ("filter-block", "{% filter upper %}{{ structure }}{% endfilter %}", "line 1: {% filter %} is not allowed"),
    ("autoescape", "x\n{% autoescape false %}{{ structure }}{% endautoescape %}",
     "line 2: {% autoescape %} is not allowed in templates"),
    # other constructs outside the whitelist
    ("dict-literal", "{{ {'a': structure} }}", "line 1: a literal dict is not allowed in templates"),
    ("slice", "{{ structure[0:3] }}", "line 1: slicing [a:b] is not allowed in templates"),
    ("callable-test", "{% if structure is callable %}x{% endif %}",
     "line 1: the test 'is callable' is not allowed in templates (allowed tests:"),
    ("star-args", "{{ structure|default(*options) }}",
     "line 1: *args or **kwargs passed to the filter 'default' is not allowed in templates"),
    ("reserved-loop-variable", "{% for self in options %}{{ self }}{% endfor %}",
     "line 1: the loop variable 'self' is not allowed in templates"),
    # undefined names, wherever they appear
    ("undefined", "Is the {{ organ }} visible?",
     "line 1: the variable 'organ' is not allowed in templates (not declared in requires "
     "['structure', 'plane', 'options'])"),
    ("undefined-in-loop", "{% for o in options %}\n{{ o }} or {{ organ }}{% endfor %}",
     "line 2: the variable 'organ' is not allowed in templates (not declared in requires"),
    ("undefined-loop-source", "{% for o in organs %}{{ o }}{% endfor %}",
     "line 1: the variable 'organs' is not allowed in templates"),
    ("undefined-loop-filter", "{% for o in options if o != organ %}{{ o }}{% endfor %}",
     "line 1: the variable 'organ' is not allowed"),
    ("undefined-in-condition", "{% if plane == 'axial' %}a{% elif organ %}\nb{% endif %}",
     "line 1: the variable 'organ' is not allowed"),
    ("undefined-in-else", "{% if plane %}a{% else %}\n\n{{ organ }}{% endif %}",
     "line 3: the variable 'organ' is not allowed"),
    ("undefined-filter-argument", "{{ structure|default(organ) }}", "line 1: the variable 'organ' is not allowed"),
    ("loop-variable-after-loop", "{% for o in options %}{{ o }}{% endfor %}{{ o }}",
     "line 1: the variable 'o' is not allowed"),
    ("loop-outside-loop", "{{ loop.index }}", "line 1: the name 'loop' is not allowed"),
    # syntax errors keep their line
    ("syntax-error", "Where is the\n{{ structure }?", "line 2: template syntax error: unexpected '}'"),
    ("unclosed-block", "a\nb\n{% if structure %}x", "line 3: template syntax error: Unexpected end of template"),
    ("unknown-tag", "{% do options.append(1) %}", "line 1: template syntax error: Encountered unknown tag 'do'"),
    ("too-deep-to-parse", "{{ " + "(" * 300 + "structure" + ")" * 300 + " }}",
     "line 1: template syntax error: expression nested too deeply to parse"),
]


@pytest.mark.parametrize("text, message", [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_unsafe_or_broken_variants_are_rejected_at_load_with_file_variant_and_line(tmp_path, text, message):
    path = _write_family(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_family_file(path)
    assert f"{path}: variants[1] ({PROBE}): {message}" in str(err.value)


ACCEPTED = [
    ("plain", "Is the {{ structure }} visible?", {}, "Is the liver visible?"),
    ("if-elif-else", "{% if plane == 'axial' %}A{% elif plane in ['coronal', 'sagittal'] %}B{% else %}C{% endif %}",
     {"plane": "coronal"}, "B"),
    ("conditional-expression", "{{ 'an' if structure[0] in 'aeiou' else 'a' }} {{ structure }}",
     {"structure": "aorta"}, "an aorta"),
    ("boolean-logic", "{{ 'yes' if not (plane == 'coronal' or plane is none) and options|length > 2 else 'no' }}",
     {}, "yes"),
    ("loop-with-loop-variable",
     "{% for o in options|sort %}{{ loop.index }}. {{ o|capitalize }}{% if not loop.last %}, {% endif %}{% endfor %}",
     {}, "1. Kidney, 2. Liver, 3. Spleen"),
    ("loop-else", "{% for o in options %}{{ o }}{% else %}none{% endfor %}", {"options": []}, "none"),
    ("loop-tuple-target", "{% for a, b in options %}{{ a }}{{ b }} {% endfor %}", {"options": ["xy", "zw"]},
     "xy zw"),
    ("filters", "{{ structure|replace('_', ' ')|title }} / {{ options|join(' or ') }} / {{ options|first|upper }}",
     {"structure": "left_kidney"}, "Left Kidney / liver or spleen or kidney / LIVER"),
    ("default-and-numbers", "{{ plane|default('axial') }} {{ (structure|length + 1 - 1)|string }} {{ 3.14159|round(2) }}",
     {}, "axial 5 3.14"),
    ("concat-and-items", "{{ options[0] ~ '/' ~ options[-1] }}", {}, "liver/kidney"),
    ("tests", "{{ 'n' if options[0] is string and 4 is divisibleby 2 and structure is lower else 'x' }}", {}, "n"),
    ("raw-block", "{% raw %}{{ not a variable }}{% endraw %}", {}, "{{ not a variable }}"),
    ("whitespace-control", "Is the\n  {{- ' ' ~ structure -}}\n  ?", {}, "Is the liver?"),
]


@pytest.mark.parametrize("text, context, expected", [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_whitelisted_constructs_load_and_render(tmp_path, text, context, expected):
    fam = load_family_file(_write_family(tmp_path, text))
    ctx = {"structure": "liver", "plane": "axial", "options": ["liver", "spleen", "kidney"]} | context
    assert render(fam, fam.variants[1], ctx) == expected


def test_memoised_renders_follow_the_context_and_its_types(tmp_path):
    fam = load_family_file(_write_family(tmp_path, "{% if plane %}{{ plane }} {{ structure }}{% else %}none{% endif %}"))
    v = fam.variants[1]
    ctx = {"structure": "liver", "options": ["a"]}
    assert render(fam, v, ctx | {"plane": True}) == "True liver"
    assert render(fam, v, ctx | {"plane": 1}) == "1 liver"  # equal keys, other type
    assert render(fam, v, ctx | {"plane": 1.0}) == "1.0 liver"
    for _ in range(2):  # a second call is served from the memo, the same text
        assert render(fam, v, {"structure": "spleen", "plane": "axial"}) == "axial spleen"
        assert render(fam, v, {"structure": "spleen", "plane": ""}) == "none"


def test_requires_may_not_declare_reserved_names(tmp_path):
    path = _write_family(tmp_path, "{{ structure }}", requires=["structure", "cycler"])
    with pytest.raises(ConfigError, match=re.escape(f"{path}: requires[1]: 'cycler' is a name Jinja reserves")):
        load_family_file(path)


@pytest.mark.parametrize("path", sorted(resource_dir("templates").glob("*/*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_builtin_family_passes_the_whitelist(path):
    fam = load_family_file(path)
    assert len(fam.variants) >= 3


@pytest.mark.parametrize("name", builtin_recipes())
def test_every_builtin_recipe_loads_its_families(name):
    recipe = load_recipe(name)
    families = {}
    for path in template_paths(recipe):
        families |= load_families(path, generators=GENERATORS)
    assert families and all(f.variants for f in families.values())


@pytest.mark.parametrize("name", builtin_recipes())
def test_lint_passes_on_builtin_recipes(name, capsys):
    from pipeline.cli import main

    assert main(["lint", "--recipe", name]) == 0, capsys.readouterr()
    assert "0 problem(s)" in capsys.readouterr().out


def test_lint_on_a_recipe_with_a_malicious_family_exits_nonzero_naming_file_and_line(tmp_path, capsys):
    from pipeline.cli import main

    shutil.copytree(resource_dir("templates") / "radvuqa", tmp_path / "mine")
    bad = (tmp_path / "mine" / "laterality_open.yaml").resolve()
    data = yaml.safe_load(bad.read_text())
    data["variants"][2]["text"] = "Which side?\n{{ structure.__class__.__mro__ }}"
    bad.write_text(yaml.safe_dump(data, sort_keys=False))
    recipe = (resource_dir("recipes") / "sample.yaml").read_text().replace(
        "templates: [radvuqa]", "templates: [mine]")
    (tmp_path / "r.yaml").write_text(recipe)
    assert main(["lint", "--recipe", str(tmp_path / "r.yaml")]) != 0
    err = capsys.readouterr().err
    assert f"{bad}: variants[2] (lat_open_v3): line 2: the attribute .__class__ is not allowed" in err


# ------------------------------------------------- defence in depth: sandbox, bound

def _unchecked(text: str, requires=("s",)) -> TemplateFamily:
    """A family built by hand, around the loader."""
    return TemplateFamily("f", "t", "grounding", "open", "text", tuple(requires),
                          (Variant("v1", text),), 1, "hand.yaml")


def test_environment_has_no_globals_and_only_whitelisted_filters_and_tests():
    env = environment()
    assert env.globals == {}
    assert set(env.filters) == set(FILTERS)
    assert set(env.tests) == set(TESTS)


@pytest.mark.parametrize(
    "text, context, error",
    [
        ("{{ ''.__class__.__mro__ }}", {}, "SecurityError"),
        ("{{ s.__class__ }}", {"s": "x"}, "SecurityError"),
        ("{{ 'x' * 1000000000 }}", {}, "SecurityError: the '*' operator is disabled"),
        ("{{ 2 ** 1000000 }}", {}, "SecurityError: the '**' operator is disabled"),
        ("{{ range(3) }}", {}, "UndefinedError: 'range' is undefined"),
        ("{{ 'a'|center(1000000000) }}", {}, "TemplateAssertionError: No filter named 'center'"),
        ("{{ s + s }}", {"s": "x" * 1500}, "OutputLimitExceeded: '+' produced 3,000 characters"),
        ("{{ s|replace('a', s) }}", {"s": "a" * 100}, "OutputLimitExceeded: filter 'replace' produced 10,000"),
    ],
    ids=["mro", "context-dunder", "multiply", "power", "range", "center", "plus-bound", "filter-bound"],
)
def test_sandbox_stops_what_the_whitelist_would_reject(text, context, error):
    # the environment itself, without the load-time check in front of it
    with pytest.raises(Exception) as err:
        environment().from_string(text).render(**context)
    assert error in f"{type(err.value).__name__}: {err.value}"


def test_render_never_compiles_an_unchecked_template():
    fam = _unchecked("{{ s.__class__.__mro__ }}")
    with pytest.raises(CaseError) as err:
        render(fam, fam.variants[0], {"s": "x"})
    assert err.value.reason == "template.rejected"
    assert "hand.yaml: variant v1: line 1: the attribute .__class__ is not allowed" in err.value.message


@pytest.mark.parametrize(
    "text, context, message",
    [
        ("{% for o in options %}{{ s }} {% endfor %}", {"options": list(range(100)), "s": "x" * 40},
         f"rendered text passed {MAX_RENDERED_CHARS:,} characters"),
        ("{{ s ~ s ~ s }}", {"s": "y" * 700}, f"rendered text passed {MAX_RENDERED_CHARS:,} characters"),
        ("{{ s|replace('a', 'aaaaaaaaaa')|replace('a', 'aaaaaaaaaa') }}", {"s": "a" * 30},
         "filter 'replace' produced 3,000 characters"),
        ("{{ options|list|join(',') }}", {"options": "z" * 2500}, "filter 'list' produced 2,500 items"),
    ],
    ids=["loop", "concat", "replace-chain", "list"],
)
def test_render_output_is_bounded(tmp_path, text, context, message):
    fam = load_family_file(_write_family(tmp_path, text, requires=["s", "options"]))
    with pytest.raises(CaseError) as err:
        render(fam, fam.variants[1], context)
    assert (err.value.stage, err.value.reason) == ("qa", "template.too_long")
    assert err.value.message.startswith(f"{fam.source}: variant {PROBE}: {message}")


def test_render_stops_streaming_at_the_bound(tmp_path):
    pulled = []

    def endless():  # 1 MB if drained: finite, so a regression fails instead of hanging
        for _ in range(100_000):
            pulled.append(1)
            yield "x" * 10

    fam = load_family_file(_write_family(tmp_path, "{% for o in options %}{{ o }}{% endfor %}"))
    with pytest.raises(CaseError, match="template.too_long|rendered text passed"):
        render(fam, fam.variants[1], {"options": endless()})
    assert len(pulled) <= MAX_RENDERED_CHARS // 10 + 2


def test_render_errors_of_any_kind_become_case_errors(tmp_path):
    fam = load_family_file(_write_family(tmp_path, "{{ structure|round }}"))
    with pytest.raises(CaseError) as err:
        render(fam, fam.variants[1], {"structure": "liver"})
    assert err.value.reason == "template.render_error"
    assert err.value.message.startswith(f"{fam.source}: variant {PROBE}: TypeError")


def test_output_limit_is_not_a_template_error():
    # render() tells too_long apart from render_error by this type
    from jinja2 import TemplateError

    assert not issubclass(OutputLimitExceeded, TemplateError)


# --------------------------------------------------------------------- safe YAML

POOL = """\
name: mine
version: 1
regions:
  abdomen:
    display: abdomen
    structures:
      liver: {display: liver}
"""


def _recipe_text() -> str:
    return (resource_dir("recipes") / "sample.yaml").read_text()


def _family_text() -> str:
    return yaml.safe_dump(_family_data("Where is the {{ structure }}?"), sort_keys=False)


LOADERS = {
    "recipe": (_recipe_text, lambda p: load_recipe(str(p))),
    "template-family": (_family_text, load_family_file),
    "pool": (lambda: POOL, lambda p: load_pools([p])),
    "label-pool": (lambda: (resource_dir("distractor_pools") / "radimagenet.yaml").read_text(),
                   lambda p: load_label_pools([p])),
}


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_python_tags_are_rejected_naming_file_and_line(tmp_path, kind):
    text, load = LOADERS[kind]
    lines = text().splitlines()
    path = tmp_path / f"{kind}.yaml"
    marker = tmp_path / "pwned"
    path.write_text("\n".join([*lines, f"evil: !!python/object/apply:os.system ['touch {marker}']", ""]))
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value).startswith(
        f"{path}: line {len(lines) + 1}, column 7: invalid YAML: tag 'tag:yaml.org,2002:python/object/apply:os.system' "
        "is not allowed: configs are plain data")
    assert not marker.exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: &x [1, 2]\nb: *x\n", "line 2, column 4: invalid YAML: found alias *x: YAML aliases are not allowed"),
        ("a: &a [1]\nb: &b [*a, *a]\nc: [*b, *b]\n", "line 2, column 8: invalid YAML: found alias *a"),
        ("name: one\nseed: 1\nname: two\n",
         "line 3, column 1: invalid YAML: duplicate key 'name' (first on line 1)"),
        ("a:\n  b: 1\n  c: 2\n  b: 3\n", "line 4, column 3: invalid YAML: duplicate key 'b' (first on line 2)"),
        ("a: !custom 1\n", "line 1, column 4: invalid YAML: tag '!custom' is not allowed"),
        ("a: [1, 2\n", "invalid YAML: "),
    ],
    ids=["alias", "billion-laughs", "duplicate-key", "nested-duplicate-key", "custom-tag", "syntax"],
)
def test_yaml_refuses_aliases_duplicates_and_tags(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_yaml_reads_plain_data(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: [1, 2.5, true, null, text]\nb: {c: d}\n")
    assert load_yaml(path) == {"a": [1, 2.5, True, None, "text"], "b": {"c": "d"}}


@pytest.mark.parametrize("case", ["directory", "fifo", "missing", "too-large", "not-utf8"])
def test_unreadable_configs_name_the_file(tmp_path, case):
    path = tmp_path / "c.yaml"
    if case == "directory":
        path.mkdir()
        expected = "cannot read: not a regular file"
    elif case == "fifo":
        os.mkfifo(path)  # reading it would block forever
        expected = "cannot read: not a regular file"
    elif case == "missing":
        expected = "cannot read: no such file"
    elif case == "too-large":
        path.write_bytes(b"a: " + b"x" * MAX_CONFIG_BYTES + b"\n")
        expected = f"larger than {MAX_CONFIG_BYTES:,} bytes"
    else:
        path.write_bytes(b"name: caf\xe9\n")
        expected = "byte 9: not UTF-8 text"
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {expected}")):
        load_yaml(path)


_LOADING = re.compile(r"\byaml\.(?:load|load_all|unsafe_load\w*|full_load\w*|safe_load\w*)\s*\(|\bLoader\s*=")


def test_only_load_yaml_parses_yaml_in_the_package():
    """Every config read goes through config.yaml_files.load_yaml (a SafeLoader subclass)."""
    offenders = []
    for path in sorted((Path(__file__).resolve().parent.parent / "pipeline").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if _LOADING.search(line) and path.name != "yaml_files.py":
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert offenders == []
    from pipeline.config.yaml_files import _ConfigLoader

    assert issubclass(_ConfigLoader, yaml.SafeLoader)


# ------------------------------------------------------ schema errors: file + path

def test_recipe_schema_error_names_file_and_path(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(_recipe_text().replace("templates: [radvuqa]", "templates: [7]"))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: questions.templates[0]: 7 is not of type 'string'")):
        load_recipe(str(path))


def test_family_schema_error_names_file_and_path(tmp_path):
    data = _family_data("ok {{ structure }}")
    data["variants"][1]["text"] = 5
    path = tmp_path / "fam.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: variants[1].text: 5 is not of type 'string'")):
        load_family_file(path)


def test_pool_schema_error_names_file_and_path(tmp_path):
    path = tmp_path / "pool.yaml"
    path.write_text(POOL.replace("liver: {display: liver}", "liver: {display: liver, lesion: maybe}"))
    with pytest.raises(ConfigError, match=re.escape(
            f"{path}: regions.abdomen.structures.liver.lesion: 'maybe' is not of type 'boolean'")):
        load_pools([path])


def test_schema_errors_come_in_list_order_and_are_shortened(tmp_path):
    data = _family_data("x {{ structure }}")
    data["variants"] = [{"id": f"v{i}", "text": "t"} for i in range(12)]
    data["variants"][10]["id"] = "Bad"
    data["variants"][2]["id"] = "Also bad"
    data["description"] = ["x" * 5000]
    path = tmp_path / "fam.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_family_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}: description: ") and len(message) < len(str(path)) + 500
    data["description"] = "fine"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: variants[2].id: 'Also bad' does not match")):
        load_family_file(path)


# ------------------------------------------------------------ recipe confinement

def _recipe(folder: Path, templates: str = "radvuqa", pools: str = "totalsegmentator") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "r.yaml"
    path.write_text(_recipe_text().replace("templates: [radvuqa]", f"templates: [{templates!r}]")
                    .replace("pools: [totalsegmentator, physiology]", f"pools: [{pools!r}]"))
    return path


@pytest.mark.parametrize(
    "entry, message",
    [
        ("/etc", "must be a built-in name or a path inside"),
        ("../outside", "must be a built-in name or a path inside"),
        ("inside/../../outside", "must be a built-in name or a path inside"),
        ("", "must be a built-in name or a path inside"),
        ("link-to-outside", "resolves to {outside}, outside the recipe's folder"),
        ("inside/link-to-outside", "resolves to {outside}, outside the recipe's folder"),
        ("loop", "cannot be resolved"),
    ],
    ids=["absolute", "dotdot", "dotdot-inside", "empty", "symlink", "nested-symlink", "symlink-loop"],
)
def test_template_entries_cannot_leave_the_recipe_folder(tmp_path, entry, message):
    outside = tmp_path / "outside"
    _write_family(outside, "Where is the {{ structure }}?")
    folder = tmp_path / "recipes"
    (folder / "inside").mkdir(parents=True)
    (folder / "link-to-outside").symlink_to(outside)
    (folder / "inside" / "link-to-outside").symlink_to(outside)
    (folder / "loop").symlink_to(folder / "loop")
    recipe = load_recipe(str(_recipe(folder, templates=entry)))
    with pytest.raises(ConfigError) as err:
        template_paths(recipe)
    assert f"r.yaml: questions.templates[0]: {entry!r}" in str(err.value)
    assert message.format(outside=outside.resolve()) in str(err.value)


def test_pool_entries_cannot_leave_the_recipe_folder_through_a_file_link(tmp_path):
    (tmp_path / "secret.yaml").write_text(POOL)
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "pool.yaml").symlink_to(tmp_path / "secret.yaml")
    recipe = load_recipe(str(_recipe(folder, pools="pool.yaml")))
    with pytest.raises(ConfigError, match=re.escape(
            f"questions.pools[0]: 'pool.yaml' resolves to {(tmp_path / 'secret.yaml').resolve()}, "
            "outside the recipe's folder")):
        pool_paths(recipe)


def test_a_family_file_linked_from_outside_is_refused(tmp_path):
    _write_family(tmp_path / "elsewhere", "Where is the {{ structure }}?", name="evil.yaml")
    mine = tmp_path / "recipes" / "mine"
    _write_family(mine, "Where is the {{ structure }}?")
    (mine / "evil.yaml").symlink_to(tmp_path / "elsewhere" / "evil.yaml")
    recipe = load_recipe(str(_recipe(tmp_path / "recipes", templates="mine")))
    (folder,) = template_paths(recipe)
    with pytest.raises(ConfigError, match=re.escape(
            f"{mine.resolve() / 'evil.yaml'}: resolves to {(tmp_path / 'elsewhere' / 'evil.yaml').resolve()}, "
            "outside the template folder")):
        load_families(folder, generators=GENERATORS)


def test_links_that_stay_inside_the_folder_are_followed(tmp_path):
    folder = tmp_path / "recipes"
    mine = folder / "real"
    _write_family(mine, "Where is the {{ structure }}?")
    (mine / "alias.yaml").symlink_to(mine / "fam.yaml")  # same family twice: a duplicate, not a leak
    (folder / "mine").symlink_to(mine)
    (folder / "pool.yaml").write_text(POOL)
    (folder / "pool-link.yaml").symlink_to(folder / "pool.yaml")
    recipe = load_recipe(str(_recipe(folder, templates="mine", pools="pool-link.yaml")))
    assert template_paths(recipe) == [mine.resolve()]
    assert pool_paths(recipe) == [(folder / "pool.yaml").resolve()]
    with pytest.raises(ConfigError, match="family: 'probe' already defined"):
        load_families(template_paths(recipe)[0], generators=GENERATORS)


def _string_fields(schema: dict, path: str = "") -> set[str]:
    """JSON paths of every string-typed value a recipe may hold (``*`` = any key)."""
    out: set[str] = set()
    types = schema.get("type")
    if types == "string" or (isinstance(types, list) and "string" in types):
        out.add(path)
    for key, sub in schema.get("properties", {}).items():
        out |= _string_fields(sub, f"{path}.{key}" if path else key)
    if isinstance(schema.get("items"), dict):
        out |= _string_fields(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out |= _string_fields(schema["additionalProperties"], f"{path}.*")
    if "propertyNames" in schema:
        out.add(f"{path}.<key>")
    if schema.get("type") == "object" and "properties" not in schema and "additionalProperties" not in schema:
        out.add(f"{path}.*")  # free-form mapping
    for sub in schema.get("oneOf", []) + schema.get("anyOf", []):
        out |= _string_fields(sub, path)
    return out


def test_no_recipe_field_names_a_file_except_the_confined_ones():
    """Every string a recipe can hold, and why it cannot make radvqa read or write
    outside --input/--output.  A new string field fails here until it is classified."""
    import json

    schema = json.loads((resource_dir("schemas") / "recipe.schema.json").read_text())
    classified = {
        "name": "pattern ^[a-z0-9][a-z0-9_-]*$ (no '/', no '..'); printed, stored in the manifest",
        "description": "free text; stored in the manifest, never opened",
        "questions.templates[]": "resolve_entry: built-in name or a path confined to the recipe folder",
        "questions.pools[]": "resolve_entry: built-in name or a path confined to the recipe folder",
        "questions.families[]": "family ids, compared with loaded families",
        "questions.settings.*": "generator settings (numbers, finding labels); never opened",
        "splits.fractions.<key>": "split names become shard file names: pattern ^[a-z][a-z0-9_]*$",
        "privacy.pseudonym_key": "an HMAC key, never opened",
        "slices.selection.structures[]": "structure labels compared with mask names",
        "source.layout": "checked against the layout registry's names when the recipe loads; never opened",
        "audit.configs[]": "config names compared with the corpus's configs; never opened",
        "audit.splits[]": "split names compared with the corpus's splits; never opened",
        "audit.ignore.*": "reasons printed in the audit; never opened",
        "audit.learn_from.*": "config names compared with the corpus's configs; never opened",
        "ood.split": "a split name (pattern ^[a-z][a-z0-9_]*$) compared with unit splits; never opened",
    }
    assert _string_fields(schema) == set(classified)


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("name: sample", "name: ../../tmp/x", "name: '../../tmp/x' does not match"),
        ("{train: 0.6", "{../train: 0.6", "splits.fractions: '../train' does not match"),
    ],
    ids=["recipe-name", "split-name"],
)
def test_names_that_become_paths_are_restricted_by_the_schema(tmp_path, old, new, message):
    text = _recipe_text()
    assert old in text
    path = tmp_path / "r.yaml"
    path.write_text(text.replace(old, new))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {message}")):
        load_recipe(str(path))


def test_builtin_names_never_escape_the_resources(tmp_path):
    recipe = load_recipe(str(_recipe(tmp_path)))
    for kind in ("templates", "distractor_pools"):
        for entry in ("..", "../recipes", "radvuqa/../../pipeline"):
            with pytest.raises(ConfigError):
                resolve_entry(recipe, kind, entry, "questions.x[0]")


@pytest.mark.parametrize("name", builtin_recipes())
def test_plain_variants_render_exactly_as_jinja_renders_them(name, monkeypatch):
    """Variants that are only text and ``{{ name }}`` skip Jinja's runtime; every built-in
    variant, on the lint contexts of its generator, renders the same either way."""
    from pipeline.kinds.registry import get_kind
    from pipeline.launch.build import _kind
    from pipeline.qa import templates
    from pipeline.qa.lint import _lint_rng, lint_records
    from pipeline.qa.questions import DEFAULT_SETTINGS, assemble
    from pipeline.qa.templates import _compiled

    recipe = load_recipe(name)
    prep = get_kind(_kind(recipe)).prepare(recipe)
    families, pools = prep["families"], prep["pools"]
    plain = compared = 0
    for fam in families.values():
        contexts = []
        for record in lint_records(pools, fam.generator):
            made = GENERATORS[fam.generator](record, fam, pools, _lint_rng(fam, record),
                                             DEFAULT_SETTINGS)
            for item in made if isinstance(made, list) else [made] if made is not None else []:
                contexts.append(assemble(fam, item, _lint_rng(fam, record))["context"])
        for variant in fam.variants:
            plain += _compiled(variant.text, fam.requires)[2] is not None
            for context in contexts:
                monkeypatch.setattr(templates, "PLAIN_FAST_PATH", True)
                fast = render(fam, variant, context)
                monkeypatch.setattr(templates, "PLAIN_FAST_PATH", False)
                assert render(fam, variant, context) == fast, (fam.source, variant.id)
                compared += 1
    assert plain and compared
    # a missing value fails the same way on both paths
    fam = next(f for f in families.values()
               if any(_compiled(v.text, f.requires)[2] and "{{" in v.text for v in f.variants))
    variant = next(v for v in fam.variants if _compiled(v.text, fam.requires)[2] and "{{" in v.text)
    errors = []
    for fast_path in (True, False):
        monkeypatch.setattr(templates, "PLAIN_FAST_PATH", fast_path)
        with pytest.raises(CaseError) as err:
            render(fam, variant, {})
        errors.append((err.value.reason, str(err.value)))
    assert errors[0] == errors[1] and errors[0][0] == "template.render_error"
