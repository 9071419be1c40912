"""``3d-rad``: a volumes corpus as 3D-RAD's own files, ready for its evaluation scripts.

What 3D-RAD's repository (github.com/Tang-xiaoxiao/3D-RAD) reads, and what this writes:

* ``3DRAD/<split>/Task<n>_<name>/<subtask>.csv`` with the columns ``Task, Subtask,
  VolumeName, Question, Answer, QuestionType, AnswerChoice, Choice A … Choice D``
  (:data:`COLUMNS`); ``QuestionType`` ``Close`` or ``Open``, ``-`` in every cell an
  open question leaves empty (never a bare empty cell: ``pandas.read_csv`` would read
  NaN).  File names are theirs: :data:`FILES` for tasks 1–3, ``<Finding>.csv`` for
  existence (Task 4, ``Subtask`` the finding's place in the alphabetical list of
  CT-RATE's 18 findings when every finding is one of them, else among the corpus's),
  and the current scan's letter (``b.csv`` …) for the temporal tasks 5 and 6
  (``Subtask`` the letter's rank among that split's letters, as theirs).
* Temporal rows always offer :data:`TEMPORAL_CHOICES` as A–D in that order, existence
  and other yes/no rows ``A Yes`` / ``B No``; our answers are re-mapped to those
  letters.  Sizes ``33.8 x 29.3 mm`` are written ``34x29 mm``.
* ``valid_path.csv`` (``VolumeName, Path``) beside ``3DRAD/``: their ``RADDataset``
  (M3D/Bench/dataset/multi_dataset.py) and RadFM's ``rad_dataset.py`` index it by
  ``VolumeName`` and ``np.load`` the ``Path`` (absolute by default, option
  ``paths=relative`` for paths relative to the export folder).
* ``volumes/<VolumeName stem>.npy``: float32 in [0, 1], our stored ``[k, j, i]``
  array resized (trilinear) to ``volume_shape`` (default ``32,256,256``, M3D's
  ``image_size``) with a channel axis at ``channel_axis`` (default ``0``: ``1, D, H,
  W`` as M3D's loader takes it; ``-1`` or ``none``).

``VolumeName`` is ``<split>_<patient>_<scan letter>_1.nii.gz`` (``validation`` as
``valid``), CT-RATE's pattern: patients numbered from 1 in the order of their
pseudonymous keys, letters ``a``, ``b`` … in each patient's study order.
Questions with no 3D-RAD file (organ volume, mean HU) are left out and counted.
"""

from __future__ import annotations

import csv
import io
import os
import re
import string
from collections import Counter
from collections.abc import Mapping

import numpy as np

from pipeline.core.slices import resample
from pipeline.core.volume_facts import CT_RATE_FINDINGS
from pipeline.exports.base import ExportError
from pipeline.exports.format import ExportFormat, ExportJob
from pipeline.io.atomic import AtomicFile, write_file

COLUMNS = ["Task", "Subtask", "VolumeName", "Question", "Answer", "QuestionType", "AnswerChoice",
           "Choice A", "Choice B", "Choice C", "Choice D"]
TASK_DIRS = {1: "Task1_Image_Observation", 2: "Task2_Anomaly_Detection", 3: "Task3_Medical_Computation",
             4: "Task4_Existence_Detection", 5: "Task5_Static_Temporal_Diagnosis",
             6: "Task6_Longitudinal_Temporal_Diagnosis"}
#: (our task, our subtask) -> (3D-RAD task, file stem, Subtask number) for tasks 1–3.
FILES = {
    ("image_observation", "location"): (1, "Anatomical_observation", 1),
    ("image_observation", "appearance"): (1, "Pathological_observation", 2),
    ("anomaly_detection", "which"): (2, "Abnormality_type", 3),
    ("anomaly_detection", "presence"): (2, "Diagnosis", 4),
    ("medical_computation", "diameter"): (3, "Diameter", 1),
    ("medical_computation", "lesion_size"): (3, "Size", 2),
}
EXISTENCE_TASK = "existence_detection"
TEMPORAL_TASKS = {"static_temporal_diagnosis": 5, "longitudinal_temporal_diagnosis": 6}
TEMPORAL_CHOICES = (
    "Refractory Lesion (Persistent or recurrent, now present)",
    "Resolved Lesion (Previously present or recurrent, now absent)",
    "New Lesion (Absent previously, now present)",
    "No Abnormality (Always absent)",
)
#: First word of our temporal class (core.volume_facts.TEMPORAL_CLASSES) -> 3D-RAD letter.
TEMPORAL_LETTER = {"refractory": "A", "resolved": "B", "new": "C", "no": "D"}
YES_NO = ("Yes", "No")
PATH_TABLE = "valid_path.csv"
OPTIONS = {"volume_shape": "32,256,256", "channel_axis": "0", "paths": "absolute"}
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*x\s*(\d+(?:\.\d+)?)\s*mm\s*$")


def finding_name(label: str) -> str:
    """A finding label as 3D-RAD names its file: ``lung_nodule`` -> ``Lung nodule``."""
    words = label.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def size_text(answer: str) -> str:
    """``33.8 x 29.3 mm`` -> ``34x29 mm`` (3D-RAD's whole millimetres); other text unchanged."""
    m = SIZE.match(answer)
    if not m:
        return answer
    return f"{int(float(m.group(1)) + 0.5)}x{int(float(m.group(2)) + 0.5)} mm"


def volume_names(volumes: list[Mapping]) -> dict[str, str]:
    """``volume_id`` -> ``<split>_<patient>_<letter>_1.nii.gz`` (patients by key, letters by study order)."""
    patients = {p: n for n, p in enumerate(sorted({v["patient_key"] for v in volumes}), 1)}
    studies: dict[str, list] = {}
    for v in volumes:
        studies.setdefault(v["patient_key"], []).append((v["study_order"], v["volume_id"]))
    names = {}
    for v in volumes:
        order = sorted(studies[v["patient_key"]])
        rank = order.index((v["study_order"], v["volume_id"]))
        if rank >= len(string.ascii_lowercase):
            raise ExportError(f"volumes/: patient {v['patient_key']}: more than 26 studies, "
                              f"3D-RAD's scan letters run a-z")
        split = "valid" if v["split"] == "validation" else v["split"]
        names[v["volume_id"]] = f"{split}_{patients[v['patient_key']]}_{string.ascii_lowercase[rank]}_1.nii.gz"
    return names


def threedrad_row(row: Mapping, volume_name: str, where: str) -> tuple[int, str, dict] | None:
    """``(task, file stem, cells)`` of one QA row, ``None`` when 3D-RAD has no file for it.

    The ``Subtask`` cell of existence and temporal rows is filled in later (it numbers
    the files of a split).
    """
    task, subtask, qtype = row["task"], row.get("subtask") or "", row["question_type"]
    cells = {"VolumeName": volume_name, "Question": row["question"]}
    if task in TEMPORAL_TASKS:
        letter = TEMPORAL_LETTER.get(str(row["answer_text"]).strip().lower().split(" ")[0])
        if letter is None:
            raise ExportError(f"{where}: answer_text: {row['answer_text']!r} is none of 3D-RAD's "
                              f"temporal classes (Refractory, Resolved, New, No abnormality)")
        scan = volume_name.split("_")[2]
        cells |= closed(letter, TEMPORAL_CHOICES)
        return TEMPORAL_TASKS[task], scan, cells
    if task == EXISTENCE_TASK or (task, subtask) in FILES:
        number, stem = (4, finding_name(subtask)) if task == EXISTENCE_TASK else FILES[(task, subtask)][:2]
        if qtype == "closed":
            yn = {"yes": "A", "no": "B"}.get(str(row["answer"]).strip().lower())
            if yn is None:
                raise ExportError(f"{where}: answer: {row['answer']!r} is not yes/no")
            cells |= closed(yn, YES_NO)
        elif qtype == "multiple_choice":
            options = list(row.get("options") or ())
            if len(options) > 4:
                raise ExportError(f"{where}: options: {len(options)} options, 3D-RAD has Choice A-D")
            cells |= closed(row["answer"], options)
        else:
            cells |= {"Answer": size_text(str(row["answer"])), "QuestionType": "Open", "AnswerChoice": "-",
                      **{f"Choice {c}": "-" for c in "ABCD"}}
        if task != EXISTENCE_TASK:
            cells["Subtask"] = FILES[(task, subtask)][2]
        return number, stem, cells
    return None


def closed(letter: str, choices) -> dict:
    """The cells of a closed row: its letter, the chosen text and Choice A–D (``-`` past the last)."""
    index = string.ascii_uppercase.index(letter)
    return {"Answer": choices[index], "QuestionType": "Close", "AnswerChoice": letter,
            **{f"Choice {c}": (choices[n] if n < len(choices) else "-") for n, c in enumerate("ABCD")}}


def volume_array(npy: bytes, shape: tuple[int, int, int], channel_axis: int | None) -> np.ndarray:
    """A stored ``.npy`` volume resized to ``shape`` (trilinear), float32 in [0, 1], channel axis added."""
    arr = np.load(io.BytesIO(npy), allow_pickle=False).astype(np.float32)
    if arr.ndim != 3:
        raise ExportError(f"npy: shape {arr.shape}, expected a 3D volume")
    if tuple(arr.shape) != tuple(shape):
        canon = np.transpose(arr, (2, 1, 0))  # resample works on [i, j, k]
        target = [n / m for n, m in zip(canon.shape, reversed(shape))]
        canon = resample(canon, (1.0, 1.0, 1.0), target, nearest=False)
        out = np.zeros(tuple(reversed(shape)), np.float32)
        crop = tuple(slice(0, min(a, b)) for a, b in zip(canon.shape, out.shape))
        out[crop] = canon[crop]
        arr = np.transpose(out, (2, 1, 0))
    arr = np.clip(arr, 0.0, 1.0).astype(np.float32)
    return arr if channel_axis is None else np.expand_dims(arr, channel_axis)


def read_options(options: Mapping[str, str]) -> tuple[tuple[int, int, int], int | None, str]:
    """``volume_shape``, ``channel_axis`` and ``paths`` from the export options (defaults :data:`OPTIONS`)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ExportError(f"option: {unknown[0]!r} is not one of {', '.join(OPTIONS)} (3d-rad)")
    opts = OPTIONS | dict(options)
    try:
        shape = tuple(int(x) for x in opts["volume_shape"].split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ExportError(f"option volume_shape: {opts['volume_shape']!r}, expected three sizes D,H,W >= 1")
    axis = opts["channel_axis"].strip().lower()
    if axis not in ("0", "-1", "none"):
        raise ExportError(f"option channel_axis: {opts['channel_axis']!r}, expected 0, -1 or none")
    if opts["paths"] not in ("absolute", "relative"):
        raise ExportError(f"option paths: {opts['paths']!r}, expected absolute or relative")
    return shape, None if axis == "none" else int(axis), opts["paths"]


class ThreeDRad(ExportFormat):
    """3D-RAD's CSVs, its volume path table and ``.npy`` volumes."""

    name = "3d-rad"
    title = "3d-rad (3D-RAD's own files)"
    help = ("3DRAD/<split>/Task*/<subtask>.csv + valid_path.csv + volumes/*.npy, as 3D-RAD's evaluation "
            "reads them (volumes corpora only; options volume_shape, channel_axis, paths)")
    default_boxes = "pixel"
    kinds = ("volumes",)
    options = OPTIONS

    def kind_error(self, corpus_dir: str, kind: str) -> str:
        return (f"{corpus_dir}: 3d-rad needs a volumes corpus (3D-RAD asks questions of whole CT "
                f"volumes); this is a {kind} (2D) corpus — export it with llava, sharegpt or vlmevalkit")

    def export(self, job: ExportJob) -> None:
        shape, channel_axis, paths = read_options(job.options)
        corpus, layout, out = job.corpus, job.layout, job.output
        volumes = [r for rel in corpus.shards(layout.media)
                   for r in corpus.read_rows(rel, ("volume_id", "patient_key", "split", "study_order"))]
        names = volume_names(volumes)
        files: dict[tuple[str, int, str], list[dict]] = {}
        skipped: Counter = Counter()
        for split in job.splits:
            for rel in corpus.shards(layout.rows, split):
                columns = ("qa_id", "volume_id", "task", "subtask", "question_type", "question", "options",
                           "answer", "answer_text")
                for row in corpus.read_rows(rel, columns):
                    where = f"{rel}: qa_id {row['qa_id']}"
                    if row["volume_id"] not in names:
                        raise ExportError(f"{where}: volume_id {row['volume_id']} not in {layout.media}/")
                    made = threedrad_row(row, names[row["volume_id"]], where)
                    if made is None:
                        skipped[f"{row['task']}/{row['subtask']}"] += 1
                        continue
                    task, stem, cells = made
                    files.setdefault((split, task, stem), []).append(cells | {"_id": row["qa_id"]})
        self._number(files)
        for (split, task, stem), rows in sorted(files.items()):
            rows.sort(key=lambda c: (c["VolumeName"], c["_id"]))
            rel = f"3DRAD/{split}/{TASK_DIRS[task]}/{stem}.csv"
            path = os.path.join(out, *rel.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with AtomicFile(path) as f:
                writer = csv.writer(f.f, lineterminator="\n")
                writer.writerow(COLUMNS)
                for c in rows:
                    writer.writerow([task if col == "Task" else c[col] for col in COLUMNS])
            job.result.files[rel] = len(rows)
        for key, n in sorted(skipped.items()):
            job.log(f"export: 3d-rad: {n} {key} question(s) left out (3D-RAD has no file for them)")
        self._volumes(job, names, shape, channel_axis, paths)

    @staticmethod
    def _number(files: dict[tuple[str, int, str], list[dict]]) -> None:
        """``Subtask`` of existence files (finding order) and temporal files (letter rank per split)."""
        findings = sorted({stem for (_, task, stem) in files if task == 4})
        order = sorted(CT_RATE_FINDINGS) if set(findings) <= set(CT_RATE_FINDINGS) else findings
        for (split, task, stem), rows in files.items():
            if task == 4:
                number = order.index(stem) + 1
            elif task in (5, 6):
                number = sorted(s for (sp, t, s) in files if sp == split and t == task).index(stem) + 1
            else:
                continue
            for c in rows:
                c["Subtask"] = number

    def _volumes(self, job: ExportJob, names: Mapping[str, str], shape, channel_axis, paths) -> None:
        """``volumes/*.npy`` of the exported splits and ``valid_path.csv`` naming them."""
        corpus, layout, out = job.corpus, job.layout, job.output
        table = []
        os.makedirs(os.path.join(out, "volumes"), exist_ok=True)
        for split in job.splits:
            for rel in corpus.shards(layout.media, split):
                pf = corpus.open_shard(rel, ("volume_id", "npy"))
                for batch in pf.iter_batches(batch_size=8, columns=["volume_id", "npy"]):
                    for volume_id, npy in zip(*batch.to_pydict().values()):
                        name = names[volume_id]
                        stem = name[: -len(".nii.gz")]
                        try:
                            arr = volume_array(npy, shape, channel_axis)
                        except (ValueError, OSError) as err:
                            raise ExportError(f"{rel}: volume_id {volume_id}: npy: {err}") from err
                        buf = io.BytesIO()
                        np.save(buf, arr, allow_pickle=False)
                        path = os.path.join(out, "volumes", f"{stem}.npy")
                        write_file(path, buf.getvalue())
                        shown = os.path.abspath(path) if paths == "absolute" else f"volumes/{stem}.npy"
                        table.append((name, shown))
                        job.result.media += 1
        with AtomicFile(os.path.join(out, PATH_TABLE)) as f:
            writer = csv.writer(f.f, lineterminator="\n")
            writer.writerow(["VolumeName", "Path"])
            writer.writerows(sorted(table))
        job.result.files[PATH_TABLE] = len(table)


FORMAT = ThreeDRad()
