"""Where a sweep's trials run: in this process or local worker processes
(:mod:`.local`), or on a Dask cluster (:mod:`.dask`). An executor receives the
pending trials and the :class:`~topo_pai.experiments.store.ResultsStore`, runs each
trial through :func:`topo_pai.experiments.trial.run_trial_dict`, adds every row to
the store as it arrives and returns ``{trial id: error}`` for the trials that failed.
"""
