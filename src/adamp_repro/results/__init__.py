"""Results pipeline: run records -> one DataFrame -> paper-vs-ours tables (md, LaTeX, CSV) and figures.

- ``reference``: the paper's printed numbers (``results/paper/*.csv``)
- ``collect``: run records on disk (and optionally a W&B project) -> one row per completed run
- ``compare``: cells (mean, std, n over seeds beside the paper value); ``gains``: paired gains with their power
- ``stats``: Welch's t-test, its interval and power (scipy.stats)
- ``findings`` / ``tables``: the words and grids of a table, and its Markdown / LaTeX / CSV renderings
- ``build``: everything above, written to ``results/tables`` (and optionally logged to W&B)
- ``conclusions``: a reproduction's records beside the committed ones: bit-identity, then the per-seed targets,
  the table's verdicts and how far the numbers moved (``make reproduce-table``)
"""
