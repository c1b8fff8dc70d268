"""The lowest layer, imported by every other package and importing none of them: the exception tree
(``errors``: ``CellviewError`` → ``SlideError``, ``MppError``, ``ModelError``, ``AnalysisError``,
``ExportError``…), files written whole or not at all and the folders a user can write to (``files``), and
the fonts every drawn figure uses (``fonts``, ``resources/fonts``).
"""
