"""Text features of a question and its options, for the learned text-only baseline
(:mod:`pipeline.qa.learned`): named features, each ``name -> value``.

* :meth:`Scales.features` — the question's words (``w:liver``) and word bigrams
  (``b:the_<num>``; numbers become ``<num>`` inside them); its numbers by their position
  among the numbers (``num0`` … ``num7``), each as a value scaled by the largest train value
  at that position (``num2_val``, clipped to ±2) and as one of :data:`BINS` quantile bins of
  the train values at that position (``num2_bin7``); a box quoted as ``[x0, y0, x1, y1]``
  also gives its width, height, centre and area (``box0_w_bin3`` …), binned the same way.
* :func:`pair_features` — one option of a multiple-choice question: its text (``ot:liver``)
  and words, its position (``pos2``), length, the rank of its text and of its length among
  the question's options, the whole option sequence crossed with the position, and every
  question feature crossed with the option's text and with its position.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np

MAX_NUMBERS = 8
BINS = 10

_NUM = re.compile(r"-?\d+(?:\.\d+)?")
_TOKEN = re.compile(r"[a-z]+|-?\d+(?:\.\d+)?")
_BOX = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,"
                  r"\s*(-?\d+(?:\.\d+)?)\s*\]")



def _numbers(question: str) -> dict[str, float]:
    """Named numeric values of a question: positioned numbers and quoted boxes' geometry."""
    out: dict[str, float] = {}
    for i, m in enumerate(_NUM.findall(question)[:MAX_NUMBERS]):
        out[f"num{i}"] = float(m)
    for j, m in enumerate(_BOX.findall(question)[:2]):
        x0, y0, x1, y1 = map(float, m)
        w, h = x1 - x0, y1 - y0
        out |= {f"box{j}_w": w, f"box{j}_h": h, f"box{j}_cx": (x0 + x1) / 2,
                f"box{j}_cy": (y0 + y1) / 2, f"box{j}_area": w * h}
    return out


class Scales:
    """Per numeric name: quantile bin edges and a scale, learned from the train questions."""

    def __init__(self, questions: Iterable[str]):
        values: dict[str, list[float]] = {}
        for q, n in Counter(questions).items():  # a template's questions repeat: parsed once
            for k, v in _numbers(q).items():
                values.setdefault(k, []).extend([v] * n)
        self.edges = {}
        self.scale = {}
        for k in sorted(values):
            arr = np.sort(np.asarray(values[k], dtype=np.float64))
            # return_index: np.unique's sorting path, the same values; its hashing path first
            # imports numpy.ma (7 ms of CPU, a regenerate's only use of it) to ask is_masked
            self.edges[k] = np.unique(np.quantile(arr, np.linspace(0, 1, BINS + 1)[1:-1]),
                                      return_index=True)[0]
            self.scale[k] = float(np.max(np.abs(arr))) or 1.0
        self._seen: dict[str, dict[str, float]] = {}

    def features(self, question: str) -> dict[str, float]:
        """The question's named features (the same dict for the same question: do not change it)."""
        found = self._seen.get(question)
        if found is None:
            found = self._seen[question] = self._features(question)
        return found

    def _features(self, question: str) -> dict[str, float]:
        out: dict[str, float] = {}
        text = question.lower()
        tokens = _TOKEN.findall(text)
        words = ["<num>" if t[0].isdigit() or t[0] == "-" else t for t in tokens]
        for w in words:
            if w != "<num>":
                out["w:" + w] = 1.0
        for a, b in zip(words, words[1:]):
            out[f"b:{a}_{b}"] = 1.0
        nums = _numbers(question)
        out[f"nnum:{sum(1 for k in nums if k.startswith('num'))}"] = 1.0
        for k, v in nums.items():
            if k in self.edges:
                out[f"{k}_val"] = max(-2.0, min(2.0, v / self.scale[k]))
                out[f"{k}_bin{int(np.searchsorted(self.edges[k], v, side='right'))}"] = 1.0
            else:
                out[f"{k}_unseen"] = 1.0
        return out


def pair_features(qf: Mapping[str, float], options: list[str], j: int) -> dict[str, float]:
    ot = "ot:" + options[j].lower()
    out = _option_features(options, j, ot)
    for k, v in qf.items():
        out[f"{k}|{ot}"] = v
        out[f"{k}|pos{j}"] = v
    return out


class Pairs:
    """:func:`pair_features` of a question's options (the same dicts), its crossed question
    features built once per (question, option text) and per (question, position): a
    group's questions and options repeat."""

    def __init__(self, scales: Scales):
        self.scales = scales
        self._by_text: dict[tuple[str, str], dict[str, float]] = {}
        self._by_pos: dict[tuple[str, int], dict[str, float]] = {}

    def features(self, question: str, options: list[str], j: int) -> dict[str, float]:
        ot = "ot:" + options[j].lower()
        out = _option_features(options, j, ot)
        by_text = self._by_text.get((question, ot))
        if by_text is None:
            qf = self.scales.features(question)
            by_text = self._by_text[question, ot] = {f"{k}|{ot}": v for k, v in qf.items()}
        by_pos = self._by_pos.get((question, j))
        if by_pos is None:
            qf = self.scales.features(question)
            by_pos = self._by_pos[question, j] = {f"{k}|pos{j}": v for k, v in qf.items()}
        out.update(by_text)
        out.update(by_pos)
        return out


def _option_features(options: list[str], j: int, ot: str) -> dict[str, float]:
    """The option's own features (no question feature crossed in)."""
    text = options[j]
    ranks = sorted(range(len(options)), key=lambda i: (options[i], i))
    out = {"bias": 1.0, ot: 1.0, f"pos{j}": 1.0, f"pos{j}|{ot}": 1.0,
           f"rank{ranks.index(j)}": 1.0, f"pos{j}|rank{ranks.index(j)}": 1.0,
           f"nopt{len(options)}|pos{j}": 1.0,
           f"seq:{chr(31).join(options)}|pos{j}": 1.0,
           f"len{min(len(text) // 4, 12)}": 1.0}
    lengths = sorted((len(o), i) for i, o in enumerate(options))
    out[f"lenrank{[i for _, i in lengths].index(j)}"] = 1.0
    for w in _TOKEN.findall(text.lower()):
        out["ow:" + w] = 1.0
    return out
