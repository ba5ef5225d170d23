"""Cohorts: a study's cases registered in one run, on one machine or a Dask cluster.

A manifest (CSV) lists the cases (``manifest``); each is registered by the same code as
``progreg register`` / ``register-4d`` into its own folder, atomically, skipped on a rerun
when its inputs and settings are unchanged (``runner``, on Dask distributed: a local cluster
or an existing scheduler); ``cohort`` writes the study's table and page.

Imports: ``core``, ``io``, ``model`` and ``registration``.
"""
