"""Everything that can be checked before work starts, checked when a command starts: before any
download, preparation or training, each problem is one line naming the file, the key and the fix.

The spec layer holds names only (models, optimizers, schedules, augmentation policies, TTA views,
ensemble methods); here they are held against the registries beside their code. Then the command line:
the profile, MODEL=, FOLD=, and what `tune` needs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import models
from competition.errors import SpecError, UserError
from competition.recipe import LossConfig, ModelRun
from competition.spec import CompetitionSpec
from pipelines.machine import cores
from pipelines.machine.device import AUTO, PRECISIONS
from pipelines.recipe.augment import POLICIES, alternation_problem, colour_problem
from pipelines.recipe.losses import LOSSES
from pipelines.recipe.optim import OPTIMIZERS, SCHEDULES
from pipelines.recipe.registry import Registry
from pipelines.stages.ensemble import METHODS
from pipelines.stages.predict import VIEWS

# Dotted paths of a model run whose values name a registered implementation (also as tuning choices).
NAMED_FIELDS: dict[str, Registry] = {"optimizer.name": OPTIMIZERS, "schedule.name": SCHEDULES, "augment.policy": POLICIES,
                                     "loss.name": LOSSES}


def spec_file(spec: CompetitionSpec) -> str:
    return f"competition/{spec.name}.yaml"


def _refuse(spec: CompetitionSpec, key: str, problem: str) -> SpecError:
    return SpecError(f"{spec_file(spec)}: key '{key}': {problem}")


def _field(run: ModelRun, path: str) -> str:
    head, _, leaf = path.partition(".")
    section = getattr(run, head)
    if section is None:  # an unset optional section: its defaults (`loss:` unset is cross-entropy)
        section = {"loss": LossConfig()}[head]
    return getattr(section, leaf)


def check_model_run(spec: CompetitionSpec, key: str, run: ModelRun) -> None:
    try:
        models.check_name(run.model)
    except models.ModelError as exc:
        raise _refuse(spec, f"{key}.model", str(exc)) from None
    for path, registry in NAMED_FIELDS.items():
        problem = registry.problem(_field(run, path))
        if problem:
            raise _refuse(spec, f"{key}.{path}", problem)
    if colour_problem(spec, run.augment.policy):
        raise _refuse(spec, f"{key}.augment.policy", colour_problem(spec, run.augment.policy))
    if alternation_problem(run.augment, spec):
        raise _refuse(spec, f"{key}.augment.flip_order", alternation_problem(run.augment, spec))
    if run.precision != AUTO and run.precision not in PRECISIONS:
        raise _refuse(spec, f"{key}.precision", f"unknown precision '{run.precision}'; "
                                                f"use auto or one of {', '.join(PRECISIONS)}")
    if run.pretrained and ":" not in run.model:
        raise _refuse(spec, f"{key}.pretrained", f"model '{run.model}' has no published weights; set `pretrained_file:` "
                                                 "to a local checkpoint instead")
    if run.pretrained_file and not Path(run.pretrained_file).is_file():
        raise _refuse(spec, f"{key}.pretrained_file", f"{run.pretrained_file}: no such file")


def check_runs(spec: CompetitionSpec, key: str, runs: list[ModelRun], views: list[str], method: str) -> None:
    """A profile's or the pool's runs, TTA views and ensemble method."""
    for number, run in enumerate(runs):
        check_model_run(spec, f"{key}.{number}", run)
    for number, view in enumerate(views):
        if VIEWS.problem(view):
            raise _refuse(spec, f"{key.rsplit('.', 1)[0]}.tta.{number}", VIEWS.problem(view))
    if METHODS.problem(method):
        raise _refuse(spec, f"{key.rsplit('.', 1)[0]}.ensemble", METHODS.problem(method))


def check_spec(spec: CompetitionSpec) -> None:
    """Every name in every profile, and the tuning choices that name implementations."""
    for profile_name, profile in spec.profiles.items():
        check_runs(spec, f"profiles.{profile_name}.models", profile.models, profile.tta, profile.ensemble)
    if spec.pool is not None:
        check_runs(spec, "pool.candidates", spec.pool.candidates, spec.pool.tta, spec.pool.ensemble)
    if spec.tuning is not None:
        for path, registry in NAMED_FIELDS.items():
            space = spec.tuning.search_space.get(path)
            for choice in (space.choices or []) if space is not None else []:
                problem = registry.problem(str(choice)) or (colour_problem(spec, str(choice)) if path == "augment.policy" else None)
                if problem:
                    raise _refuse(spec, f"tuning.search_space.{path}.choices", problem)


def check_command(spec: CompetitionSpec, args: argparse.Namespace) -> None:
    """The command line against the spec: profile, MODEL=, FOLD=, CORES=, THREADS=, and what tune needs."""
    check_spec(spec)
    cores.check_settings()
    if getattr(args, "plan", None):
        from pipelines.planning.records import read_plan

        for number, planned in enumerate(read_plan(Path(args.plan), spec).runs):
            try:
                check_model_run(spec, f"runs.{number}.run", planned.run)
            except SpecError as exc:
                raise UserError(f"PLAN={args.plan}: {str(exc).split(': ', 1)[1]}") from None
    if getattr(args, "profile", None) is not None:
        spec.profile(args.profile)
        if getattr(args, "model", None):
            spec.model_run(args.profile, args.model)
    fold = getattr(args, "fold", None)
    if fold is not None and spec.folds.missing_fold([fold]) is not None:
        raise UserError(f"FOLD={fold}: {spec.folds.numbering()} in {spec_file(spec)}")
    if args.stage == "tune":
        if spec.tuning is None:
            raise SpecError(f"{spec_file(spec)}: no `tuning:` section (search_space, folds, pruner); add one to tune")
        if args.total is None and args.trials is None:
            raise UserError("say how many trials: --trials N (add N to the study) or --total N (run until it holds N)")
        if args.scheduler is not None:
            from pipelines.tuning.studies import storage_url

            if storage_url(spec, args.storage).startswith("sqlite"):
                raise UserError(f"SCHEDULER={args.scheduler}: the workers of several machines need a study database "
                                "they all reach, and SQLite is a file on this one (its locks do not hold over a shared "
                                "disk); give STORAGE=postgresql://user@host/db")
    scheduler = getattr(args, "scheduler", None)
    check_gpus(args, scheduler)
    if scheduler is not None and not scheduler.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
        raise UserError(f"SCHEDULER={scheduler}: not a Dask scheduler address; write it as tcp://host:8786")


def check_gpus(args: argparse.Namespace, scheduler: str | None) -> None:
    """GPUS=n: a fixed profile or a replayed plan, on this machine's devices, without Dask workers."""
    gpus = getattr(args, "gpus", 1)  # a whole number of at least 1: the command line's type checked it
    if gpus == 1:
        return
    if getattr(args, "budget", None) and not getattr(args, "plan", None):
        raise UserError(f"GPUS={gpus} trains a fixed recipe: add PROFILE=quick|full, or PLAN= to replay a plan "
                        "(the time-budget planner times one device)")
    if getattr(args, "workers", 1) > 1 or scheduler is not None:
        raise UserError(f"GPUS={gpus} spreads one run over several devices; WORKERS=/SCHEDULER= spread runs over "
                        "workers: use one or the other")
    from pipelines.machine import ddp
    from pipelines.machine.device import wants_cuda

    if not ddp.launched() and (problem := ddp.check_devices(gpus, wants_cuda())):
        raise UserError(f"GPUS={gpus}: {problem}")


def resolve_mode(spec: CompetitionSpec, args: argparse.Namespace) -> None:
    """Fill in how the command runs: a fixed profile (args.profile) or a time budget (args.budget in
    seconds, args.plan): PROFILE= pins a profile; otherwise a spec with a `pool:` plans inside its budget
    (BUDGET= overrides) and one without uses its quick (CPU) or full (GPU) profile."""
    if not hasattr(args, "profile"):
        return
    budget, plan = getattr(args, "budget", None), getattr(args, "plan", None)
    if args.profile is not None and (budget or plan):
        raise UserError(f"PROFILE={args.profile} pins a fixed recipe; drop it to plan with BUDGET= or PLAN=")
    if budget and plan:
        raise UserError("PLAN= replays a plan's decisions, whatever its budget; give BUDGET= or PLAN=, not both")
    if args.profile is None and (spec.pool is None or args.stage == "tune"):
        if budget or plan:
            raise SpecError(f"{spec_file(spec)}: no `pool:` of candidate runs to plan with; add one, or use "
                            f"PROFILE=quick|full")
        from pipelines.machine.device import default_profile

        args.profile = default_profile()
        return
    if args.profile is None:
        from competition.recipe import parse_duration
        from pipelines.machine.device import default_profile

        if budget:
            try:
                args.budget = parse_duration(budget)
            except ValueError as exc:
                raise UserError(f"BUDGET={budget}: {exc}") from None
        else:
            args.budget = spec.budget.cuda if default_profile() == "full" else spec.budget.cpu
