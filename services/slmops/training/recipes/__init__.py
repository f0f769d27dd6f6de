"""Training methods as recipes: one readable module each, and a registry from method name.

A recipe module has `train(ctx, data) -> None` (run in every Ray Train
worker; ends with `trainer_kit.finish`) and a `RECIPE` entry describing what
its spec may hold, checked at `Create` and again by the job.
"""
