"""Jupyter support: the ``%lql`` / ``%%lql`` magics (:mod:`lql.notebook.magics`).

``%load_ext lql`` calls :func:`lql.load_ipython_extension`, which imports
:mod:`lql.notebook.magics` (and so IPython) only then. Results display themselves
(``Result._repr_html_``); see docs/NOTEBOOKS.md.
"""
