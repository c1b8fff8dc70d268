"""Scale-out: a cohort of slides planned, run in this process or on a Dask cluster (local processes or
a running scheduler), retried when a worker dies, and reported as it goes; ``dask_worker`` is the
preload of CellView's own worker processes. Imports the engine and the outputs; one bad slide never
stops a batch.
"""
