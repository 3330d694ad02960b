"""Empirical privacy auditing: a one-run lower bound on epsilon beside the accountant's upper bound.

``statistic`` (Steinke, Nasr & Jagielski, NeurIPS 2023), ``canaries`` (Dirac canaries on rarely
used features), ``attacks`` (scores from the released global models), ``central`` (in-process
DP-SGD audit: calibration and CI guard), ``federated`` (through the simulation), ``commands``.
"""
