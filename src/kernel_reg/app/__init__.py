"""The application: experiments run with the library (``kernel_reg.penalties``, ``attacks``, ``spectral``,
``lipschitz``, ``models``, ``deformations``), which never imports it.

    config, regularizers     flags and presets -> one typed Config; the training registry
    data, rundir, builders   data sets (content hashes), run folders and their typed records, what a run builds
    training, evaluation     the training loop; robustness and certificates of trained runs
    checks                   the gradient-masking checks of an evaluation
    studies, report, plots   tables and figures over run folders
    sweep                    grids of runs on local processes or Slurm
    zoo, reproduction        the model index: load, verify, retrain published runs
    environment, signals, extras   provenance of a run, stopping cleanly, optional dependencies
    cli                      the command line
"""
