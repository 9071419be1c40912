"""``radvqa`` command line: build, sample, lint.

Arguments the CLI does not know are passed to Beam as pipeline options
(``--runner``, ``--direct_num_workers``, ``--setup_file`` …).  Without
``--runner`` the build uses Beam's in-process ``FnApiRunner``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radvqa", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True)

    b = sub.add_parser("build", help="build a corpus (unknown options go to Beam)")
    b.add_argument("--recipe", default="sample", help="built-in name or YAML path (default: sample)")
    b.add_argument("--input", help="input folder (default: the recipe's built-in sample)")
    b.add_argument("--output", required=True, help="output folder (local, gs://, s3:// …)")
    b.add_argument("--seed", type=int, help="override the recipe's seed")
    b.add_argument("--layout", choices=["auto", "totalseg", "multilabel", "dicom"])
    b.add_argument(
        "--max-reject-fraction", type=float, default=0.05,
        help="exit with status 3 when more cases than this are rejected (default 0.05)",
    )

    s = sub.add_parser("sample", help="write the built-in synthetic sample inputs")
    s.add_argument("--output", required=True)
    s.add_argument("--patients", type=int, default=10)
    s.add_argument("--seed", type=int, default=0)

    lint = sub.add_parser("lint", help="validate a recipe's templates and pools, render every variant")
    lint.add_argument("--recipe", default="sample")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.verb != "build":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    # Beam's GCP extras log this on import even though nothing here uses BigQuery.
    logging.getLogger().addFilter(lambda r: not str(r.msg).startswith("apitools not found"))
    try:
        if args.verb == "build":
            from pipeline.build import build

            result = build(
                args.recipe, args.output, input_dir=args.input, seed=args.seed,
                layout=args.layout, beam_args=extra, max_reject_fraction=args.max_reject_fraction,
            )
            return result.exit_code
        if args.verb == "sample":
            from pipeline.sample import write_sample

            names = write_sample(args.output, n_patients=args.patients, seed=args.seed)
            print(f"wrote {len(names)} sample cases to {args.output}")
            return 0
        if args.verb == "lint":
            return _lint(args.recipe)
    except ConfigError as err:
        print(f"radvqa {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"radvqa {args.verb}: error: {err}", file=sys.stderr)
        return 2
    return 1


def _lint(recipe_name: str) -> int:
    from pipeline.build import load_questions
    from pipeline.recipes import load_recipe
    from pipeline.templates import lint

    recipe = load_recipe(recipe_name)
    families, pools = load_questions(recipe)
    problems = lint(families, pools)
    for problem in problems:
        print(problem)
    variants = sum(len(f.variants) for f in families.values())
    print(
        f"radvqa lint: recipe {recipe.name}: {len(families)} families, {variants} variants, "
        f"{len(problems)} problem(s)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
