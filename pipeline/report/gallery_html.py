"""The report's gallery section: figures of images (or a volume's middle slice) with their
boxes outlined, a legend of the boxes, and the selected questions with their answers.

A visual-prompt question ("the structure outlined by the red box") is shown beside the
stored image it refers to (``image_boxed_easy`` or ``image_boxed``,
:func:`pipeline.schema.prompts.prompt_column`, the exports' rule), scaled like the other views."""

from __future__ import annotations

from pipeline.report.gallery import GalleryItem, GalleryPool, attach_rows, select_2d, select_volumes
from pipeline.report.html import esc, img_tag
from pipeline.report.views import (
    ANSWER_BOX_COLOUR,
    LazyImage,
    Undecodable,
    boxed_view,
    hex_colour,
    label_colours,
    volume_slice,
)
from pipeline.schema.prompts import prompt_column


def _question_html(q: dict) -> str:
    options = q.get("options") or q.get("choices") or []
    answer = q.get("answer")
    parts = [f'<li class="q" data-qa-id="{esc(q.get("qa_id"))}">',
             f'<p class="tag">{esc(q.get("task"))}'
             + (f" / {esc(q.get('subtask'))}" if q.get("subtask") else "")
             + f" · {esc(q.get('question_type'))}</p>",
             f'<p class="question">{esc(q.get("question"))}</p>']
    if options:
        items = []
        for i, opt in enumerate(options):
            letter = chr(ord("A") + i)
            cls = ' class="correct"' if letter == answer else ""
            items.append(f"<li{cls}>{esc(opt)}</li>")
        parts.append('<ol class="options" type="A">' + "".join(items) + "</ol>")
    text = q.get("answer_text")
    shown = f"<b>{esc(answer)}</b>"
    if text and text != answer:
        shown += f" — {esc(text)}"
    if q.get("answer_value") is not None:
        unit = q.get("answer_unit") or ""
        tol = q.get("answer_tolerance")
        shown += (f" <span class=\"note\">(value {float(q['answer_value']):g} {esc(unit)}"
                  + (f", tolerance ± {float(tol):g} {esc(unit)}" if tol is not None else "") + ")</span>")
    parts.append(f'<p class="answer">Answer: {shown}</p></li>')
    return "".join(parts)


def _legend(entries: list[tuple[str, tuple, str]]) -> str:
    items = "".join(
        f'<li data-label="{esc(label)}" data-colour="{colour}" data-box="{",".join(str(int(v)) for v in box)}">'
        f'<span class="sw" style="background:{colour}"></span>{esc(label)} '
        f'<span class="note">[{", ".join(str(int(v)) for v in box)}]</span></li>'
        for label, box, colour in entries)
    return f'<ul class="legend">{items}</ul>'


def gallery_2d(items: list[GalleryItem], kind: str, log=print, cache=None) -> list[str]:
    labels = [b["label"] for it in items if it.row for b in (it.row.get("boxes") or [])]
    colours = label_colours(labels)
    figures = []
    for it in items:
        if it.row is None or not (it.row.get("image") or {}).get("bytes"):
            continue
        boxes = [(b["label"], (b["x_min"], b["y_min"], b["x_max"], b["y_max"]))
                 for b in (it.row.get("boxes") or [])]
        data = it.row["image"]["bytes"]
        try:  # decoded only for a view not in the cache (pipeline.report.views)
            src = LazyImage.stored(data)
            shown, scale = boxed_view(src, data, boxes, colours, cache)
            views = [img_tag(shown, f"image {it.image_id} with its boxes", cls="view boxes")]
            for q in it.questions:
                prompt = _prompt_view(it, q, log, cache)
                if prompt:
                    views.append(prompt)
                if q.get("answer_box"):
                    ab, _ = boxed_view(src, data, [("answer", tuple(q["answer_box"]))],
                                       {"answer": ANSWER_BOX_COLOUR}, cache)
                    views.append(img_tag(ab, f"answer box of question {q['qa_id']}",
                                         cls="view answer-box",
                                         attrs=f' data-qa-id="{esc(q["qa_id"])}" '
                                               f'data-box="{",".join(str(int(v)) for v in q["answer_box"])}" '
                                               f'data-colour="{hex_colour(ANSWER_BOX_COLOUR)}"'))
        except Undecodable:  # a corrupt stored image: the build's checks should have caught it
            log(f"  gallery: image {it.image_id} could not be decoded; skipped")
            continue
        row = it.row
        if kind == "slices":
            tag = (f"{row.get('modality')} · {row.get('plane')} · slice {row.get('slice_index')} · "
                   f"{row.get('width')}×{row.get('height')} px · window "
                   f"{(row.get('window') or {}).get('name')} · split {row.get('split') or it.split}")
        else:
            meta = row.get("metadata") or {}
            tag = (f"{meta.get('modality')} · {meta.get('location')} · {meta.get('pathology')} · "
                   f"{src.size[0]}×{src.size[1]} px · split {row.get('split') or it.split}")
        body = [f'<figure class="item" data-kind="{kind}" data-image-id="{esc(it.image_id)}" '
                f'data-scale="{scale:.6g}"><div class="views">' + "".join(views) + "</div><figcaption>",
                f'<p class="tag">{esc(tag)}</p>']
        if boxes:
            body.append(_legend([(label, box, hex_colour(colours[label])) for label, box in boxes]))
        caption = [t.get("value") for t in (row.get("conversations") or []) if t.get("from") == "gpt"]
        if caption:
            body.append(f'<p class="caption">Caption: {esc(caption[0])}</p>')
        body.append('<ol class="qa">' + "".join(_question_html(q) for q in it.questions) + "</ol>")
        body.append("</figcaption></figure>")
        figures.append("".join(body))
    return figures


def _prompt_view(it: GalleryItem, q: dict, log, cache) -> str | None:
    """The view of a visual-prompt question: its stored prompted image, scaled; ``None``
    for another question (or a prompted image not stored, logged)."""
    column = prompt_column(q.get("question") or "", q.get("visual_prompt"))
    if column is None:
        return None
    data = (it.row.get(column) or {}).get("bytes")
    try:  # decoded only when its view is not in the cache (pipeline.report.views)
        png, _ = boxed_view(LazyImage.stored(data), data, [], {}, cache)
    except Undecodable:  # absent or corrupt: the build's checks should have caught it
        log(f"  gallery: image {it.image_id}: {column} of question {q['qa_id']} could not be decoded; "
            "its view skipped")
        return None
    return img_tag(png, f"{column} of question {q['qa_id']} (its visual prompt)", cls="view prompt",
                   attrs=f' data-qa-id="{esc(q["qa_id"])}" data-column="{column}" '
                         f'data-label="{esc(it.row.get("prompt_label"))}"')


def gallery_volumes(items: list[GalleryItem], cache=None) -> list[str]:
    slices = {}
    labels = []
    for it in items:
        if it.row is None or not it.row.get("npy"):
            continue
        plane, k = volume_slice(it.row["npy"])
        hits = [(b["label"], b["box"]) for b in (it.row.get("boxes3d") or []) if b["box"][0] <= k < b["box"][3]]
        slices[it.image_id] = (plane, k, hits)
        labels += [label for label, _ in hits]
    colours = label_colours(labels)
    figures = []
    for it in items:
        if it.image_id not in slices:
            continue
        plane, k, hits = slices[it.image_id]
        boxes = [(label, (b[2], b[1], b[5], b[4])) for label, b in hits]  # x = i, y = j
        shown, scale = boxed_view(LazyImage.pixels(plane),
                                  repr(plane.shape).encode() + plane.tobytes(), boxes, colours, cache)
        row = it.row
        tag = (f"{row.get('modality')} · volume {' × '.join(str(s) for s in row.get('shape') or [])} "
               f"[k, j, i] · middle axial slice k = {k} · study {row.get('study_order')} · split "
               f"{row.get('split') or it.split}")
        body = [f'<figure class="item" data-kind="volume" data-image-id="{esc(it.image_id)}" '
                f'data-slice-k="{k}" data-scale="{scale:.6g}"><div class="views">'
                + img_tag(shown, f"volume {it.image_id}, axial slice {k}", cls="view boxes")
                + "</div><figcaption>", f'<p class="tag">{esc(tag)}</p>']
        if boxes:
            body.append(_legend([(label, box, hex_colour(colours[label])) for label, box in boxes]))
        body.append('<ol class="qa">' + "".join(_question_html(q) for q in it.questions) + "</ol>")
        body.append("</figcaption></figure>")
        figures.append("".join(body))
    return figures


def gallery_section(pool: GalleryPool | None, kind: str, log, cache=None) -> str:
    """The gallery from ``pool`` (its questions collected by
    :func:`pipeline.report.stats.scan_qa`)."""
    out = ['<section id="gallery"><h2>Gallery</h2>']
    if pool is None:
        out.append("<p>No image-bearing config in this corpus.</p></section>")
        return "\n".join(out)
    if kind == "volumes":
        items = select_volumes(pool.questions, pool.patients)
        attach_rows(items, pool)
        figures = gallery_volumes(items, cache)
        out.append('<p class="note">The middle axial slice of each volume (anterior at the top, the '
                   "patient's right on the left) with every 3D box that crosses it, and that volume's "
                   "questions. Volumes are taken from the first rows of the first shard of each split "
                   "(rows are in keyed-hash order), chosen to cover the tasks.</p>")
    else:
        items = select_2d(pool.questions, pool.id_col)
        attach_rows(items, pool)
        figures = gallery_2d(items, kind, log, cache)
        what = ("each with every stored box outlined (colour per label; boxes are drawn on the "
                "stored pixels, ends exclusive)" if kind == "slices" else "with its caption")
        out.append(f'<p class="note">A few questions per task and question type (smallest '
                   f"<code>qa_id</code> among the images in the first rows of the first shard of each "
                   f"split), grouped by image, {what}. Grounding questions also show the answer box alone "
                   "(yellow). The correct option is shown in green.</p>" if kind == "slices" else
                   f'<p class="note">A few questions per task and question type (smallest '
                   f"<code>qa_id</code> among the images in the first rows of the first shard of each "
                   f"split), grouped by image, {what}. The correct option is shown in green.</p>")
    log(f"  gallery: {len(figures)} figure(s)")
    if not figures:
        out.append("<p>No rows to show.</p>")
    out.append('<div class="gallery">' + "\n".join(figures) + "</div></section>")
    return "\n".join(out)
