"""Benchmarks of ckptlite against its peers (DESIGN.md §7 targets P1-P10, issue 14's P11-P14).

Run ``pytest bench/`` (quick mode, what CI runs) or ``python -m bench.report``
(full mode: measures, prints the table, writes bench/RESULTS.md and the plot).
"""
