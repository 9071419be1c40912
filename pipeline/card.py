"""Manifest and Hugging Face dataset card (both deterministic: no wall-clock time)."""

from __future__ import annotations

from collections.abc import Mapping

import yaml

from pipeline.arrow import SCHEMAS, features_for_card

CONFIG_DESCRIPTIONS = {
    "qa": "one row per question: question, options, answer, task, template; joins `images` on `image_id`",
    "images": "one row per 2D slice: PNG image, plane, window, spacing and per-structure boxes",
    "structures": "one row per structure per volume: 3D box, volume (mL), centroid, laterality",
    "alignment": "one row per image: the image and its caption as a conversation, with metadata",
    "instruct": "one row per question: conversation plus flat question/choices/answer; image via image_id in alignment",
    "benchmark": "stratified test images x 9 questions, each row with its image",
    "volumes": "one row per volume: .npy bytes at the target shape, original/target spacing, 3D boxes",
}
VOLUME_CONFIGS = ("qa", "images", "structures")
TREE_CONFIGS = ("instruct", "alignment", "benchmark")


def card_yaml(
    split_rows: Mapping[str, Mapping[str, int]], files: Mapping[str, dict],
    config_names=VOLUME_CONFIGS, schemas: Mapping | None = None,
) -> dict:
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
        infos.append(
            {
                "config_name": config,
                "features": features_for_card((schemas or SCHEMAS)[config]),
                "splits": [
                    {
                        "name": s,
                        "num_bytes": sum(
                            f["bytes"] for p, f in files.items() if p.startswith(f"{config}/{s}-")
                        ),
                        "num_examples": int(split_rows.get(config, {}).get(s, 0)),
                    }
                    for s in splits
                ],
            }
        )
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
    default_key: bool, config_names=VOLUME_CONFIGS, extra: list[str] = (),
    schemas: Mapping | None = None,
) -> str:
    """Markdown dataset card with a YAML header ``datasets`` understands."""
    header = yaml.safe_dump(card_yaml(split_rows, files, config_names, schemas), sort_keys=False,
                            allow_unicode=True)
    lines = [
        "---",
        header.rstrip(),
        "---",
        "",
        f"# radvqa corpus — recipe `{recipe['name']}`",
        "",
        (recipe.get("description") or "").strip(),
        "",
        f"Built by radvqa from recipe `{recipe['name']}` (version {recipe['version']}, seed "
        f"{recipe['seed']}); recipe fingerprint `{fingerprint}`. `manifest.json` lists every file "
        "with its sha256 and row count: rebuilding with the same inputs, recipe and package "
        "versions gives the same bytes.",
        "",
        "## Configs",
        "",
        "| config | split | rows | what a row is |",
        "|---|---|---|---|",
    ]
    for config in config_names:
        for split, n in sorted(split_rows.get(config, {}).items(), key=lambda kv: _split_order(kv[0])):
            lines.append(f"| `{config}` | {split} | {n} | {CONFIG_DESCRIPTIONS[config]} |")
    lines += [
        "",
        "Load with the Hugging Face `datasets` library:",
        "",
        "```python",
        "from datasets import load_dataset",
        f'rows = load_dataset("parquet", data_files={{"train": "{config_names[0]}/train-*.parquet"}})["train"]',
        "```",
        "",
        "or `load_dataset(\"path/to/this/folder\", \"qa\")` for any config named above.",
        "",
        "## Questions by task",
        "",
        "| task | questions |",
        "|---|---|",
    ]
    lines += [f"| {t} | {n} |" for t, n in sorted(tasks.items())]
    lines += list(extra)
    volume_lines = [
        "",
        "## Conventions",
        "",
        "- Slices are stored in the radiological display convention: axial — anterior at the "
        "top, the patient's right on the image's left; coronal — superior at the top, the "
        "patient's right on the image's left; sagittal — superior at the top, anterior on the left.",
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
    ]
    if tuple(config_names) == VOLUME_CONFIGS:
        lines += volume_lines
    lines += [
        "",
        "## Build accounting",
        "",
        "| stage | inputs | accepted | rejected |",
        "|---|---|---|---|",
    ]
    for stage, c in counts.items():
        lines.append(f"| {stage} | {c['inputs']} | {c['accepted']} | {c['rejected']} |")
    lines += [
        "",
        "Rejected cases are listed with their reasons in `dead_letters/` — an operator-only "
        "folder: it is the one place that names source paths (relative to the input folder), "
        "so that they can be fixed; do not publish it.",
        "",
        "## De-identification",
        "",
        "- Cases and patients are named only by keyed HMAC-SHA256 pseudonyms (`case_key`, "
        "`patient_key`); no file or folder name, patient identifier or DICOM/NIfTI header text "
        "reaches the configs, the manifest or this card, except the allow-listed fields "
        "`modality` and `body_part`.",
        "- Not de-identified by radvqa: text burned into pixels, faces or other identifying "
        "anatomy in head volumes, and anything the source images themselves show. Review "
        "sources for these before publishing.",
    ]
    if default_key:
        lines.append(
            "- This corpus was built with the built-in default pseudonym key: its pseudonyms "
            "can be recomputed by anyone with the source paths. Set `RADVQA_PSEUDONYM_KEY` "
            "for real data."
        )
    return "\n".join(lines) + "\n"
