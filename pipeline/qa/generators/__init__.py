"""The question generators, one module per kind of record, behind one registry.

A template family names its *generator* (``generator:`` in the family file): the Python
that decides a question's target and answer from a record's facts, while the family's
variants hold the wording.  :data:`GENERATORS` maps every generator name to its function;
it is assembled from the tables of the modules below.

==========================================  ===========================================
:mod:`pipeline.qa.generators.slices`        slice records (RadVUQA-style families)
:mod:`pipeline.qa.generators.tree`          labelled-image trees (RadImageNet-VQA)
:mod:`pipeline.qa.generators.volumes`       volume facts (3D-RAD-style families)
:mod:`pipeline.qa.generators.common`        helpers the modules share
==========================================  ===========================================

A generator is ``gen_x(record, family, pools, gen, settings)``: ``family`` the
:class:`~pipeline.qa.templates.TemplateFamily`, ``gen`` the question's keyed stream
(every random choice is drawn from it), ``settings`` the recipe's ``questions.settings``
over :data:`pipeline.qa.questions.DEFAULT_SETTINGS`.  It returns ``None`` (no eligible
target), one question or a list of questions (one per target).  A question is a dict
with ``context`` (the variables its variants may use) and either ``answer`` (open and
closed; optional ``answer_box``) or ``correct`` and ``distractors`` (multiple choice;
optional ``position``); optionally ``question_box``, ``visual_prompt``, ``variant`` (a planned paraphrase),
``label``/``pool``/``exclude`` (for balancing, :mod:`pipeline.qa.balance`) and
``value``/``unit``/``tolerance``/``subtask``.

**Adding a generator** is one function in the module of its kind plus one line in that
module's ``GENERATORS`` table; a new kind of record is a new module with its own table,
plus its line below.  Generator names are unique across modules.
"""

from __future__ import annotations

from pipeline.qa.generators import slices, tree, volumes

#: Every generator, by the name a template family gives in ``generator:``.
GENERATORS = {**tree.GENERATORS, **volumes.GENERATORS, **slices.GENERATORS}

if len(GENERATORS) != len(tree.GENERATORS) + len(volumes.GENERATORS) + len(slices.GENERATORS):
    raise ImportError("pipeline.qa.generators: a generator name is defined by two modules")
