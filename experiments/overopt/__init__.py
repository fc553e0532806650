"""Reward-model over-optimisation at toy scale (experiments/overoptimization.py): exact tables on
the enumerable world (world), best-of-n exact and estimated (bon), the functional-form fits
(fits), the stage runs (runs), the experiment's steps and result files (driver), and the notebooks'
reading and plotting of those files (plots)."""
