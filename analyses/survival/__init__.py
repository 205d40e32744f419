"""Survival analyses: Kaplan–Meier, log-rank, Cox proportional hazards."""
