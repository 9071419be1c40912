"""The Hugging Face dataset card ``README.md`` (deterministic: no wall-clock time).

The YAML header lists every config with its ``data_files`` per split and
``dataset_info.features``, so ``datasets.load_dataset(corpus_dir, config)`` loads any of
them; the body states what a row is, the conventions, the build accounting, the shortcut
audit and exactly what is and is not de-identified.
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml

from pipeline.schema.arrow import SCHEMAS, features_for_card

CONFIG_DESCRIPTIONS = {
    "qa": "one row per question: question, options, answer, task, template; joins `images` (or `volumes`) on its id",
    "images": "one row per 2D slice: PNG image, plane, window, spacing and per-structure boxes",
    "structures": "one row per structure per volume: 3D box, volume (mL), centroid, laterality",
    "alignment": "one row per image: the image and its caption as a conversation, with metadata",
    "instruct": "one row per question: conversation plus flat question/choices/answer; image via image_id in alignment",
    "benchmark": "stratified test images x 9 questions, each row with its image",
    "volumes": "one row per volume: .npy bytes at the target shape, original/target spacing, 3D boxes, facts",
    "ood": "test images under deterministic perturbations (family, strength), for robustness",
}

SLICE_CONVENTIONS = [
    "- Slices are stored in the radiological display convention: axial — anterior at the top, "
    "the patient's right on the image's left; coronal — superior at the top, the patient's "
    "right on the image's left; sagittal — superior at the top, anterior on the left.",
    "- Boxes are pixel coordinates of the stored image: `x_min, y_min` inclusive, `x_max, "
    "y_max` exclusive (numpy slice convention); `width`/`height` are stored per image.",
    "- `slice_index` indexes the canonical volume (i → patient left, j → posterior, "
    "k → superior); `centroid_lps` is in DICOM patient coordinates (mm).",
    "- Laterality (`left`/`right`/`midline`) is the patient's side, computed from patient "
    "coordinates relative to the body midline, never from structure names.",
    "- `window` records the intensity window of each image: CT presets by name "
    "(center/width in HU), MR percentile windows with the intensities they gave.",
    "- Splits are by patient (keyed hash of a pseudonymous patient key): no patient appears "
    "in two splits.",
    "- Visual prompts: a `qa` row whose `visual_prompt` is set (`red_box`: \"the structure "
    "outlined by the red box\") refers to a box the plain `image` does not show. Join `images` on "
    "`image_id` and show `image_boxed_easy` (the red box alone), or `image_boxed` (the red box "
    "beside its nearest structures in green, blue and yellow) when the question names one of "
    "those colours; `prompt_label` names the structure in red. A slice has one prompt, so every "
    "prompted question of a slice refers to the same box. `radvqa export` applies this rule "
    "(`--option prompt_image=auto|boxed|easy`).",
]
TREE_CONVENTIONS = [
    "- Images are the source PNGs passed through unchanged (pixel data never decoded or "
    "re-encoded; ancillary text chunks removed). `region` and `label` keep the source tree's "
    "folder names; `metadata` puts them into words as RadImageNet-VQA does (`normal` → "
    "\"no pathology seen\").",
    "- Patient identity is unknown in this layout: splits follow the source's split lists when "
    "given, else a keyed hash of the image key.",
]
VOLUME_CONVENTIONS = [
    "- Splits are by patient: all studies of a patient are in one split, so longitudinal "
    "questions never straddle train and test.",
]
CONVENTIONS = {"slices": SLICE_CONVENTIONS, "tree": TREE_CONVENTIONS, "volumes": VOLUME_CONVENTIONS}

DEIDENTIFICATION = [
    "## De-identification",
    "",
    "What radvqa does (in the spirit of DICOM PS3.15 Annex E, the Basic Application Level "
    "Confidentiality Profile):",
    "",
    "- Cases and patients are named only by keyed HMAC-SHA256 pseudonyms (`case_key`, "
    "`patient_key`, and ids derived from them). No file or folder name of the input reaches "
    "the configs, the manifest, this card or the report.",
    "- No DICOM attribute reaches the corpus except the allow-listed, non-identifying ones: "
    "`Modality`, `BodyPartExamined` (only when it is a plain DICOM code string), and the "
    "geometry used to orient and scale the pixels (spacing, orientation, rescale). Every "
    "other attribute is dropped — names, IDs, dates and times, UIDs, accession numbers, "
    "institution, physicians, descriptions, comments and all private tags. NIfTI/NRRD/MHA "
    "header text (descriptions, auxiliary file names, intent names) is never read. PNG "
    "text, time and EXIF chunks of passed-through images are removed.",
    "- Study order within a patient is kept as a rank (1, 2, 3 …), never as a date.",
    "",
    "What radvqa does not de-identify — review the sources for these before publishing:",
    "",
    "- text burned into the pixels (annotations, names or dates on secondary captures);",
    "- faces and other identifying anatomy: head CT/MR volumes can be rendered into a "
    "recognisable face; rare anatomy, implants and devices can identify a person;",
    "- anything else the images themselves show.",
    "",
    "`dead_letters/` is operator-only: it is the one place that names source paths (relative "
    "to the input folder) of rejected cases, so they can be fixed. It is not a config of this "
    "dataset, no export includes it, and it must not be published. `.radvqa/` is build state "
    "(receipts, the input folder of the last build) for the operator, not part of the corpus.",
]


def card_yaml(split_rows: Mapping[str, Mapping[str, int]], files: Mapping[str, dict],
              config_names, schemas: Mapping | None = None) -> dict:
    """The card's YAML header: ``configs`` with ``data_files`` and ``dataset_info``.

    The first of ``config_names`` is the default config.
    """
    configs, infos = [], []
    for config in config_names:
        splits = sorted(
            {p.split("/", 1)[1].split("-", 1)[0] for p in files if p.startswith(config + "/")},
            key=_split_order,
        )
        if not splits:
            continue
        entry = {
            "config_name": config,
            "data_files": [{"split": s, "path": f"{config}/{s}-*.parquet"} for s in splits],
        }
        if config == config_names[0]:
            entry["default"] = True
        configs.append(entry)
        infos.append({
            "config_name": config,
            "features": features_for_card((schemas or SCHEMAS)[config]),
            "splits": [
                {"name": s,
                 "num_bytes": sum(f["bytes"] for p, f in files.items() if p.startswith(f"{config}/{s}-")),
                 "num_examples": int(split_rows.get(config, {}).get(s, 0))}
                for s in splits
            ],
        })
    return {
        "configs": configs,
        "dataset_info": infos,
        "task_categories": ["visual-question-answering"],
        "language": ["en"],
        "tags": ["medical", "radiology", "vqa", "ct", "mri", "synthetic-questions"],
        "pretty_name": "radvqa corpus",
    }


def _split_order(name: str) -> tuple:
    order = {"train": 0, "validation": 1, "test": 2}
    return (order.get(name, 3), name)


def render_card(
    *, recipe: Mapping, fingerprint: str, split_rows: Mapping[str, Mapping[str, int]],
    files: Mapping[str, dict], counts: Mapping[str, Mapping], tasks: Mapping[str, int],
    default_key: bool, config_names, extra: list[str] = (), schemas: Mapping | None = None,
    kind: str = "slices", audit: Mapping | None = None,
) -> str:
    """Markdown dataset card with a YAML header ``datasets`` understands."""
    header = yaml.safe_dump(card_yaml(split_rows, files, config_names, schemas), sort_keys=False,
                            allow_unicode=True)
    default = config_names[0]
    lines = [
        "---", header.rstrip(), "---", "",
        f"# radvqa corpus — recipe `{recipe['name']}`", "",
        (recipe.get("description") or "").strip(), "",
        f"Built by radvqa from recipe `{recipe['name']}` (version {recipe['version']}, seed "
        f"{recipe['seed']}); recipe fingerprint `{fingerprint}`. `manifest.json` lists every file "
        "with its sha256 and row count: rebuilding with the same inputs, recipe and package "
        "versions gives the same bytes.",
        "", "## Configs", "",
        "| config | split | rows | what a row is |",
        "|---|---|---|---|",
    ]
    for config in config_names:
        for split, n in sorted(split_rows.get(config, {}).items(), key=lambda kv: _split_order(kv[0])):
            if n or any(p.startswith(f"{config}/{split}-") for p in files):
                lines.append(f"| `{config}` | {split} | {n} | {CONFIG_DESCRIPTIONS[config]} |")
    lines += [
        "", "Load with the Hugging Face `datasets` library:", "", "```python",
        "from datasets import load_dataset",
        f'rows = load_dataset("path/to/this/folder", "{default}", split="train")',
        "```", "",
        "Every config named above loads the same way; `report/index.html` shows counts, "
        "distributions, the shortcut audit and a gallery.",
        "", "## Questions by task", "", "| task | questions |", "|---|---|",
    ]
    lines += [f"| {t} | {n} |" for t, n in sorted(tasks.items())]
    lines += list(extra)
    lines += ["", "## Conventions", "", *CONVENTIONS.get(kind, [])]
    if audit:
        lines += _audit_lines(audit)
    lines += ["", "## Build accounting", "", "| stage | inputs | accepted | rejected |",
              "|---|---|---|---|"]
    for stage, c in counts.items():
        lines.append(f"| {stage} | {c['inputs']} | {c['accepted']} | {c['rejected']} |")
    lines += ["", "Rejected cases are counted by reason in `manifest.json`.", "", *DEIDENTIFICATION]
    if default_key:
        lines.append(
            "- This corpus was built with the built-in default pseudonym key: its pseudonyms can "
            "be recomputed by anyone with the source paths. Set `RADVQA_PSEUDONYM_KEY` for real "
            "data.")
    return "\n".join(lines) + "\n"


def _audit_lines(audit: Mapping) -> list[str]:
    rows = [g for g in audit["groups"] if g["split"] != "train"]
    lines = [
        "", "## Shortcut audit", "",
        "Blind baselines that never see an image, learned on `train` and scored on each split, "
        f"against chance (margin {audit['margin_pp']:g} percentage points; verdict "
        f"**{audit['verdict']}**). Open questions are compared with the answer prior. "
        "`learned text-only` is a logistic regression over the question's words, numbers and "
        "the options' texts and order, trained on `train` (it never sees the image). Details "
        "in `manifest.json` (`audit`) and the report.", "",
        "| config | split | task | type | n | chance | best blind baseline | learned text-only "
        "| excess (pp) | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in rows:
        best = g["best_baseline"]
        acc = g["baselines"].get(best) if best else None
        shown = f"{best} {100 * acc:.1f}%" if acc is not None else "-"
        learned = g["baselines"].get("learned_text")
        learned = f"{100 * learned:.1f}%" if learned is not None else "-"
        lines.append(f"| {g['config']} | {g['split']} | {g['task']} | {g['question_type']} | "
                     f"{g['n']} | {100 * g['chance']:.1f}% | {shown} | {learned} | "
                     f"{g['excess_pp']:+.1f} | {g['verdict']} |")
    return lines
