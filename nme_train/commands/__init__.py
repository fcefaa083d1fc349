"""The user's commands, each a thin front door over the library: its module's `main` is an
installed console script and runs with `python -m`:

    nme-train           python -m nme_train.main                      train (and --dry_run)
    nme-sweep           python -m nme_train.commands.sweep            run an experiment grid
    nme-summarize       python -m nme_train.commands.summarize        tables and plots of a sweep
    nme-probe           python -m nme_train.commands.probe            probe a run's checkpoints
    nme-plot-curvature  python -m nme_train.commands.plot_curvature   a run's curvature figures
    nme-prepare-data    python -m nme_train.commands.prepare_data     datasets to TFDS form
    nme-profile         python -m nme_train.commands.profile          trace a running job

No command imports another. Benchmarks and one-off checks are scripts in the checkout's
tools/ (not installed).
"""
