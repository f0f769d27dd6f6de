"""Hyperparameter search: any recipe as a Ray Tune `Tuner` with ASHA early stopping.

Each trial runs the recipe on Ray Train (a `TorchTrainer` inside a Tune
function, with `TuneReportCallback` passing every checkpoint's metrics to
Tune), with the spec's values replaced by the trial's sample. ASHA stops
trials whose metric trails at the rungs. The best finished trial's output is
the job's output; every trial's config and metrics go into the job's result
and the artifact's manifest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from slmops.core.progress import Progress
from slmops.training import engine
from slmops.training.config import TrainingConfig
from slmops.training.recipes.sections import INTEGER_FIELDS, SEARCHABLE, SearchDimension


@dataclass
class SearchResult(engine.FitResult):
    trials: list[dict[str, Any]] = field(default_factory=list)


def sampler(dim: SearchDimension) -> Any:
    from ray import tune

    if dim.distribution == "choice":
        values = [_typed(dim.name, v) for v in dim.values]
        return tune.choice(values)
    if dim.distribution == "randint":
        return tune.randint(int(dim.low), int(dim.high) + 1)
    if dim.distribution == "loguniform":
        return tune.loguniform(dim.low, dim.high)
    return tune.uniform(dim.low, dim.high)


def _typed(name: str, value: str) -> float | int:
    number = float(value)
    return int(number) if name in INTEGER_FIELDS else number


def apply(config: dict[str, Any], sample: dict[str, Any]) -> dict[str, Any]:
    """A config dict with the trial's sampled values in place (and the search removed)."""
    updated = {**config, "search": None}
    for name, value in sample.items():
        section, key = SEARCHABLE[name]
        updated[section] = {
            **(updated.get(section) or {}),
            key: int(value) if name in INTEGER_FIELDS else value,
        }
    return updated


def search(config: TrainingConfig, data_ref: Any, storage: str, progress: Progress) -> SearchResult:
    """Run the search; the best finished trial's output, and every trial."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.tune.schedulers import ASHAScheduler

    settings = config.search
    assert settings is not None
    base = config.model_dump(mode="json")
    space = {dim.name: sampler(dim) for dim in settings.space}

    def trial(sample: dict[str, Any]) -> None:
        from ray import tune as tune_in_trial

        trial_config = TrainingConfig.model_validate(apply(base, sample))
        context = tune_in_trial.get_context()
        fitted = engine.fit(
            trial_config,
            data_ref,
            f"{storage}/trials/{context.get_trial_id()}",
            lambda *a, **k: None,
            run_callbacks=[TuneReportCallback()],
            loop_extra={"progress_start": 1.0},  # trials print no progress lines; the driver reports
        )
        tune_in_trial.report({**fitted.metrics, "final_checkpoint": fitted.checkpoint_path, "finished": 1.0})

    progress(0.05, f"searching {len(space)} hyperparameter(s) over {settings.trials} trial(s)")
    tuner = tune.Tuner(
        tune.with_resources(trial, {"CPU": 1}),  # the trial function; its workers reserve their own
        param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=settings.trials,
            metric=settings.metric,
            mode=settings.mode,
            max_concurrent_trials=settings.max_concurrent_trials,
            scheduler=ASHAScheduler(grace_period=settings.grace_period, reduction_factor=2),
        ),
        run_config=tune.RunConfig(storage_path=storage, name="search", verbose=0),
    )
    grid = tuner.fit()
    trials: list[dict[str, Any]] = []
    best: tuple[float, str, dict[str, float]] | None = None
    sign = 1.0 if settings.mode == "min" else -1.0
    for index, result in enumerate(grid):
        metrics = result.metrics or {}
        value = metrics.get(settings.metric)
        finished = bool(metrics.get("finished"))
        trials.append(
            {
                "trial": index,
                "config": {k: result.config.get(k) for k in space},
                "metrics": {
                    k: float(v)
                    for k, v in metrics.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                },
                "finished": finished,
                "error": str(result.error)[:300] if result.error else "",
            }
        )
        if finished and isinstance(value, (int, float)) and math.isfinite(value):
            score = sign * float(value)
            if best is None or score < best[0]:
                best = (score, str(metrics["final_checkpoint"]), trials[-1])
    if best is None:
        raise RuntimeError(f"no trial of the search finished with a finite {settings.metric}")
    _, checkpoint_path, chosen = best
    progress(0.9, f"best trial {chosen['trial']}: {settings.metric} {chosen['metrics'][settings.metric]:.4f}")
    metrics = {k: v for k, v in chosen["metrics"].items() if k not in ("finished",)}
    metrics.update(best_trial=float(chosen["trial"]), trials=float(len(trials)))
    return SearchResult(engine.materialize(checkpoint_path), metrics, storage, checkpoint_path, trials=trials)
