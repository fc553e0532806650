"""Rewards: learned reward models (and ensembles), gold functions, verifiers."""
