"""Option letters of multiple-choice questions.

A question has two to four options, lettered in order from :data:`LETTERS`; the stored
answer of a multiple-choice question is its correct option's letter.  Generation
(:mod:`pipeline.qa.questions`), balancing (:mod:`pipeline.qa.balance`,
:mod:`pipeline.qa.tree_balance`) and the audit (:mod:`pipeline.qa.audit`) share this one
definition.
"""

#: The letters of a question's options, in order (at most four options).
LETTERS = "ABCD"
