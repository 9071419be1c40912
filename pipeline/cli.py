"""``radvqa`` command line: build, sample, lint.

Arguments the CLI does not know are passed to Beam as pipeline options
(``--runner``, ``--direct_num_workers``, ``--setup_file`` …).  Without
``--runner`` the build uses Beam's in-process ``FnApiRunner``.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import logging
import os
import sys
import time

from pipeline.errors import BuildFailed, ConfigError

#: The verbs whose arguments never touch the export parser's choices and help.
_NOT_EXPORT = ("build", "regenerate", "sample", "lint", "report")

#: Set for the radvqa command (and so its Beam workers) before numpy is imported, unless the
#: user set it: numpy's OpenBLAS starts a thread per core at import, and they spin while idle —
#: `import numpy` took 0.20 s of CPU against 0.085 s with one thread (measured on a 2-core
#: VM), 0.13 s of a 0.6 s text-only regenerate of the sample.  Nothing here gives BLAS more
#: than a few hundred columns (3x3 geometry; core.boxes' pixel counts of a slice's rows and
#: columns, exact in any order; pipeline.qa.logistic avoids BLAS by design), so no work is
#: lost, and no result changes (same bytes, tested by the sample builds).
BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "1")


VERIFY_HELP = ("hash every file kept from the last build (default: a file whose size, times "
               "and inode are those its receipt recorded is trusted; any other is hashed)")


def _parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The verbs' parser; for ``verb`` one of :data:`_NOT_EXPORT`, without the export
    formats' choices and help (their modules are the export verb's own)."""
    # the layouts (with numpy, the readers, the class lists' YAML) are imported in main(),
    # after the collector is paused (see _collect_from_here), like every other module here
    from pipeline.inputs.layouts import layout_names

    p = argparse.ArgumentParser(prog="radvqa", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True)

    b = sub.add_parser("build", help="build a corpus (unknown options go to Beam)")
    b.add_argument("--recipe", default="sample", help="built-in name or YAML path (default: sample)")
    b.add_argument("--input", help="input folder (default: the recipe's built-in sample)")
    b.add_argument("--output", required=True, help="output folder (local, gs://, s3:// …)")
    b.add_argument("--seed", type=int, help="override the recipe's seed")
    b.add_argument("--layout", choices=["auto", *layout_names()])
    b.add_argument(
        "--max-reject-fraction", type=float, default=0.05,
        help="exit with status 3 when more cases than this are rejected (default 0.05)",
    )

    b.add_argument("--retries", type=int, default=1,
                   help="rerun the pipeline this many times after a failure (finished units are kept)")
    b.add_argument("--workers", type=int, default=1, metavar="N",
                   help="N local worker processes, started while the launcher plans (default 1)")
    b.add_argument("--verify-shards", action="store_true", help=VERIFY_HELP)

    g = sub.add_parser("regenerate", help="rebuild a corpus after editing templates, pools or "
                                          "splits: stored pixels reused, questions re-rendered")
    g.add_argument("--output", required=True, help="the corpus folder of an earlier build")
    g.add_argument("--recipe", help="recipe (default: the one of the last build)")
    g.add_argument("--input", help="input folder (default: the one of the last build)")
    g.add_argument("--max-reject-fraction", type=float, default=0.05)
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="N local worker processes (default 1)")
    g.add_argument("--verify-shards", action="store_true", help=VERIFY_HELP)

    s = sub.add_parser("sample", help="write the built-in synthetic sample inputs")
    s.add_argument("--output", required=True)
    s.add_argument("--patients", type=int, default=10)
    s.add_argument("--seed", type=int, default=0)

    lint = sub.add_parser("lint", help="validate a recipe's templates and pools, render every variant")
    lint.add_argument("--recipe", default="sample")
    if verb in _NOT_EXPORT:
        sub.add_parser("export")
    else:
        _export_parser(sub)
    r = sub.add_parser("report", help="rebuild DIR/report/index.html from a built corpus alone")
    r.add_argument("corpus", metavar="DIR", help="a corpus written by radvqa build")
    return p


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the radvqa command itself: see _collect_from_here and BLAS_THREADS
        os.environ.setdefault(*BLAS_THREADS)
        gc.disable()
    words = sys.argv[1:] if argv is None else argv
    parser = _parser(words[0] if words else None)
    args, extra = parser.parse_known_args(argv)
    if extra and args.verb not in ("build", "regenerate"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    # Beam's GCP extras log this on import even though nothing here uses BigQuery.
    logging.getLogger().addFilter(lambda r: not str(r.msg).startswith("apitools not found"))
    try:
        if args.verb == "build":
            # The launcher imports Apache Beam (1.4 s measured); lint, sample, export and
            # report never need it.
            from pipeline.launch.build import build

            _collect_from_here()
            result = build(
                args.recipe, args.output, input_dir=args.input, seed=args.seed,
                layout=args.layout, beam_args=extra, max_reject_fraction=args.max_reject_fraction,
                retries=args.retries, workers=args.workers, verify_shards=args.verify_shards,
            )
            return result.exit_code
        if args.verb == "regenerate":
            # Apache Beam again: imported only by the verbs that run a pipeline.
            from pipeline.launch.build import regenerate

            _collect_from_here()
            result = regenerate(args.output, recipe=args.recipe, input_dir=args.input,
                                beam_args=extra, max_reject_fraction=args.max_reject_fraction,
                                workers=args.workers, verify_shards=args.verify_shards)
            if argv is None:  # the radvqa command itself, not a caller in Python
                _exit_without_teardown(result.exit_code)
            return result.exit_code
        if args.verb == "sample":
            # only this verb writes phantoms (SimpleITK and pydicom behind it)
            from pipeline.inputs.sample import write_sample

            _collect_from_here()
            names = write_sample(args.output, n_patients=args.patients, seed=args.seed)
            print(f"wrote {len(names)} sample cases to {args.output}")
            return 0
        _collect_from_here()
        if args.verb == "lint":
            return _lint(args.recipe)
        if args.verb == "export":
            return _export(args)
        if args.verb == "report":
            return _report(args.corpus)
    except ConfigError as err:
        print(f"radvqa {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"radvqa {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except BuildFailed as err:
        print(f"radvqa {args.verb}: error: {err}", file=sys.stderr)
        return 1
    finally:
        _collect_from_here()
    return 1


def _collect_from_here() -> None:
    """Start the cyclic garbage collector that :func:`main` paused for the radvqa command's
    imports, once they are done: what they create lives as long as the process, so it is set
    aside (``gc.freeze``) rather than walked again and again — the collections during the
    imports and the full ones after them cost 50-65 ms of CPU of a 0.6 s text-only
    regenerate of the sample (measured with gc.callbacks).  Otherwise does nothing."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _exit_without_teardown(code: int) -> None:
    """End the process now when the run stayed in this process (no Apache Beam, no worker):
    every file is written and closed, the exit handlers run, and the interpreter's own
    teardown — clearing hundreds of modules and their objects — is skipped: 0.4 s of CPU of
    a 2.2 s regenerate of the sample (measured, ``os._exit`` against a normal exit, when the
    learned baseline still imported scikit-learn, SciPy and pandas).  Otherwise returns."""
    mp = sys.modules.get("multiprocessing")  # (imported only by a run that may fork)
    if "apache_beam" in sys.modules or (mp is not None and mp.active_children()):
        return
    atexit._run_exitfuncs()  # logging's flush and the other registered handlers, as at exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _lint(recipe_name: str) -> int:
    # kinds and qa: 0.4 s measured, paid by lint only (build imports them through the launcher)
    from pipeline.config.recipes import load_recipe
    from pipeline.inputs.class_lists import CLASS_FILE, class_lists
    from pipeline.kinds.base import VolumeKind
    from pipeline.kinds.registry import get_kind, kind_name
    from pipeline.qa.lint import class_list_problems, lint

    recipe = load_recipe(recipe_name)
    try:
        kind = get_kind(kind_name(recipe.section("source").get("kind")))
    except ValueError as err:
        raise ConfigError(f"{recipe.path}: {err}") from err
    prep = kind.prepare(recipe)
    families, pools = prep["families"], prep["pools"]
    problems = lint(families, pools)
    if isinstance(kind, VolumeKind):  # its cases come in the built-in layouts
        problems += class_list_problems(
            {f"distractor_pools/{CLASS_FILE} ({m}, the TotalSegmentator layouts)": names
             for m, names in class_lists().items()}, pools)
    for problem in problems:
        print(problem)
    variants = sum(len(f.variants) for f in families.values())
    print(
        f"radvqa lint: recipe {recipe.name}: {len(families)} families, {variants} variants, "
        f"{len(problems)} problem(s)"
    )
    return 1 if problems else 0


def _export_parser(sub) -> None:
    # the export formats' modules (with PIL and the image codecs): about 15 ms measured,
    # paid by the export verb and the full help only
    from pipeline.exports.boxes import BOX_STYLES
    from pipeline.exports.registry import FORMATS

    e = sub.add_parser(
        "export", help="convert a built corpus to " + " / ".join(f.title for f in FORMATS.values()) + " files",
        description="Convert a built corpus (read shard by shard; dead letters are never read).")
    e.add_argument("corpus", metavar="CORPUS_DIR", help="a corpus written by radvqa build")
    e.add_argument("--format", required=True, choices=list(FORMATS),
                   help="; ".join(f"{name}: {f.help}" for name, f in FORMATS.items()))
    e.add_argument("--output", required=True, help="export folder (new or empty)")
    e.add_argument("--splits", help="comma-separated splits (default: all for llava/sharegpt, "
                                    "test for vlmevalkit)")
    e.add_argument("--boxes", choices=list(BOX_STYLES),
                   help="box convention: pixel (as stored), qwen2.5-vl (absolute pixels of the image "
                        'resized by Qwen2.5-VL\'s smart_resize, {"bbox_2d": [...]}), internvl (0-1000, '
                        "<box>[[...]]</box>), llava ([0, 1] on the image padded to a square, 2 decimals); "
                        "default: "
                        + ", ".join(f"{f.default_boxes} for {name}" for name, f in FORMATS.items()))
    e.add_argument("--min-pixels", type=int, metavar="N",
                   help="qwen2.5-vl boxes: min_pixels of the smart_resize frame (default 3136, Qwen2.5-VL's)")
    e.add_argument("--max-pixels", type=int, metavar="N",
                   help="qwen2.5-vl boxes: max_pixels of the smart_resize frame (default 12845056, Qwen2.5-VL's)")
    e.add_argument("--captions", action="store_true",
                   help="tree corpora: also export the alignment captions (llava/sharegpt)")
    e.add_argument("--name", help="file prefix (default: radvqa_<recipe name>)")
    e.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a format's own setting, repeatable; " + "; ".join(
                       f"{name}: " + ", ".join(f"{k} (default {v})" for k, v in f.options.items())
                       for name, f in FORMATS.items() if f.options))


def _export(args) -> int:
    # the export verb's own modules (see _export_parser)
    from pipeline.exports.base import ExportError
    from pipeline.exports.registry import export_corpus

    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    options = dict(o.split("=", 1) if "=" in o else (o, "") for o in args.option)
    try:
        result = export_corpus(
            args.corpus, args.output, args.format, splits=splits, boxes=args.boxes,
            captions=args.captions, name=args.name, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
            log=lambda m: print(m, file=sys.stderr, flush=True), options=options)
    except ExportError as err:
        print(f"radvqa export: error: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


def _report(corpus: str) -> int:
    # the report's modules: 0.25 s measured, paid only by this verb
    from pipeline.report import write_report

    started = time.monotonic()
    path = write_report(corpus, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"radvqa report: wrote {path} in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
