"""The Optuna study a time-budget plan may schedule (planned in plan.py, run by tuning/planned.py):
the part of the spec's `tuning:` search space that fits a candidate (model arguments its constructor
does not take are left out; so are colour-changing policies where colour defines the class), the
candidate's own values inside it (enqueued as the first trial), and the study's name, fixed by the
candidate, the objective and the data, so that a later run extends the same study.
"""
from __future__ import annotations

import models
from competition.errors import UserError
from competition.paths import competition_root
from competition.recipe import Candidate, ParamSpec
from competition.spec import CompetitionSpec, stable_hash
from pipelines.recipe.augment import colour_problem

OWN_RECIPE = "own_recipe"  # user attribute of the enqueued trial that holds the candidate's own parameters


def fit_search_space(spec: CompetitionSpec, candidate: Candidate) -> tuple[dict[str, ParamSpec], list[str]]:
    """(the dimensions of `tuning.search_space` that fit the candidate, why the others were left out)."""
    takes = models.arguments(candidate.model)
    takes = takes if takes is not None else candidate.model_args  # a library model: only what the recipe names
    kept, left_out = {}, []
    for path, space in spec.tuning.search_space.items():
        head, _, key = path.partition(".")
        if head == "model_args" and key not in takes:
            left_out.append(f"{path} ({candidate.model} takes no '{key}')")
            continue
        if path == "augment.policy" and space.type == "categorical":
            keeps = [c for c in space.choices if not colour_problem(spec, str(c))]
            if not keeps:
                left_out.append(f"{path} (every choice changes colour, which defines the class here)")
                continue
            space = space.model_copy(update={"choices": keeps})
        kept[path] = space
    return kept, left_out


def _within(space: ParamSpec, value) -> bool:
    if space.type == "categorical":
        return value in space.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not space.low <= value <= space.high:
        return False
    return space.step is None or abs((value - space.low) / space.step - round((value - space.low) / space.step)) < 1e-9


def own_values(candidate: Candidate, space: dict[str, ParamSpec]) -> dict:
    """The candidate's own value of each dimension that lies inside it (others are left to the sampler)."""
    data = candidate.model_dump(mode="json")
    defaults = models.arguments(candidate.model) or {}
    values = {}
    for path, dimension in space.items():
        head, _, key = path.partition(".")
        if head == "model_args":
            value = candidate.model_args.get(key, defaults.get(key))
        else:
            value = data[head][key] if key else data[head]
        if _within(dimension, value):
            values[path] = value
    return values


def study_name(spec: CompetitionSpec, candidate: Candidate) -> str:
    """Fixed by what a trial's score depends on: the recipe (not its length or precision), the objective
    (`tuning:` without the search space, which may grow; the metric and its direction), the data and the folds."""
    recipe = candidate.key_dump(exclude={"epochs", "precision", "compile", "family", "min_epochs"})
    objective = spec.tuning.model_dump(mode="json", exclude={"search_space"})
    key = stable_hash({"run": recipe, "tuning": objective, "metric": spec.metric.model_dump(), "data": spec.data_hash(),
                       "folds": spec.folds.model_dump(), **models.revision_key(candidate.model)})
    return f"plan-{spec.name}-{candidate.name}-{key[:8]}"


def candidate_named(spec: CompetitionSpec, name: str) -> Candidate:
    for candidate in spec.pool.candidates:
        if candidate.name == name:
            return candidate
    raise UserError(f"the plan names run '{name}', which {spec.name}'s pool no longer has; "
                    f"remove the plan of record under {competition_root(spec.name) / 'plans'} to plan again")
