"""Reports: plots and tables from run directories; privacy-utility sweeps.

- :mod:`fedsys.report.runs` reads a run directory back (metrics, config, client ledgers).
- :mod:`fedsys.report.plots` draws the PNGs; :mod:`fedsys.report.document` writes report.md.
- :mod:`fedsys.report.sweep` plans and runs one simulation per target epsilon.
- :mod:`fedsys.report.commands` holds the ``fedsys report`` and ``fedsys sweep`` commands.

Nothing is imported here, so ``fedsys --help`` stays fast (matplotlib and Opacus load lazily).
"""
