"""Figures (CAMs, decomposition masks, synthetic samples, run plots) and the HTML run report.

`fsa_lt.viz.figures.visualize` backs `fsa-lt visualize`; `fsa_lt.viz.report.write_run_report`
is called at the end of `fsa-lt run`.  Both import matplotlib lazily (Agg canvas only).
"""
