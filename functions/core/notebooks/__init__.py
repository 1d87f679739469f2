"""What the notebooks under ``notebooks/`` share beyond the domain services: the record of
the values a run computed (``record``). Plotting stays in the notebooks: nothing here
imports Jupyter or a plotting library."""
