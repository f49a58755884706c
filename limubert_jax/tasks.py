"""The task registry: every name `config.task` may hold (`TASKS`, one `Task` record each),
and how a chain of them runs.

`main` dispatches through `run`; tests and notebooks call it the same way. A task's `run`
is a function `(config, workdir, shared) -> summary`; `shared` carries what chained tasks
load once: the dataset, and for downstream tasks the labelled data, the encoder and its
embeddings (`downstream.runners.Inputs`). A task's `check` runs before any task of the
chain does, and once: `run` trusts it and checks nothing again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from limubert_jax.data.loading import PretrainData, load_data
from limubert_jax.downstream import runners
from limubert_jax.io import storage
from limubert_jax.io.workdir import WorkdirLock, check_resume
from limubert_jax.pretraining import trainer
from limubert_jax.runtime.errors import LimuBertError


@dataclasses.dataclass
class Shared:
    """What the tasks of one chain share: the dataset, loaded once, and the downstream inputs
    (labelled data, encoder, embeddings), loaded on first use and reset by a pretraining."""

    config: ml_collections.ConfigDict
    workdir: Any
    data: PretrainData
    downstream: runners.Inputs | None = None

    def downstream_inputs(self) -> runners.Inputs:
        if self.downstream is None:
            self.downstream = runners.Inputs(self.config, self.workdir, self.data,
                                             encoded=runners.uses_encoder(self.config, parse_tasks(self.config.task)))
        return self.downstream


Check = Callable[[ml_collections.ConfigDict, Any, list[str], PretrainData], None]
Run = Callable[[ml_collections.ConfigDict, Any, Shared], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Task:
    """One name `config.task` may hold. `check(config, workdir, chain, data)` raises a
    `LimuBertError` for anything that would stop the task (`chain`: every task name of
    `config.task`, in order); `run(config, workdir, shared)` does the work. Tasks sharing a
    check (the downstream ones) have it called once per chain, for all of them together."""

    name: str
    check: Check
    run: Run


def _check_pretrain(config, workdir, chain: list[str], data: PretrainData) -> None:
    trainer.check_pretrain_config(config, data)
    check_resume(workdir, config, data)  # before anything is written


def _pretrain(config, workdir, shared: Shared) -> dict[str, Any]:
    summary = trainer.pretrain(config, workdir, shared.data, checked=True)
    shared.downstream = None  # a new encoder: the next downstream task loads it afresh
    return summary


def _check_downstream(config, workdir, chain: list[str], data: PretrainData) -> None:
    stages = [task for task in chain if TASKS[task].check is _check_downstream]
    # A pretraining before the first downstream stage provides its encoder: the stages are
    # checked against the model it will train (its fields were checked first, see `run`).
    before = chain[:chain.index(stages[0])]
    pretrained = trainer.model_config_from(config) if "pretrain" in before else None
    runners.check_config(config, workdir, stages, data, pretrained_config=pretrained)


def _downstream(name: str, runner: Callable[..., dict]) -> Task:
    def run_task(config, workdir, shared: Shared) -> dict[str, Any]:
        return runner(config, workdir, inputs=shared.downstream_inputs())

    return Task(name, _check_downstream, run_task)


TASKS: dict[str, Task] = {task.name: task for task in (
    Task("pretrain", _check_pretrain, _pretrain),
    _downstream("embed", runners.embed_dataset),
    _downstream("classify", runners.classify),
    _downstream("finetune", runners.finetune),
    _downstream("baseline", runners.baseline),
    _downstream("report", runners.run_report),
)}


def parse_tasks(task: str) -> list[str]:
    """'pretrain+report' -> ['pretrain', 'report']; an unknown name is a `LimuBertError`."""
    tasks = [t.strip() for t in str(task).split("+")]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise LimuBertError(f"config.task {task!r}: unknown task {unknown[0]!r}; tasks: {', '.join(TASKS)}")
    return tasks


def check_outside_inputs(config: ml_collections.ConfigDict, workdir) -> None:
    """A `LimuBertError` if the job would write into its input data: the workdir or the
    data_dir inside one of `config.dataset.manual_dir`'s folders (a recordings folder would
    then hold checkpoints, and the next build would read them as recordings)."""
    manual = config.dataset.get("manual_dir")
    for folder in str(manual).split("+") if manual else ():
        outputs = (("--workdir", workdir), ("config.dataset.data_dir", config.dataset.get("data_dir")))
        for field, path in outputs:
            if folder and path and storage.is_within(path, folder):
                raise LimuBertError(f"{field}={path} is inside config.dataset.manual_dir={folder}: the job would "
                                    "write into its input data; put it elsewhere")


def run(config: ml_collections.ConfigDict, workdir,
        on_done: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Runs `config.task` in `workdir` (a local path or `gs://...`): one task of `TASKS`, or
    several joined by '+' (e.g. 'pretrain+report'), in order. Returns the last task's summary;
    `on_done(task, summary)` sees each task's as it finishes (the main command prints the
    report's table from it: the package only logs, commands print their results)."""
    tasks = parse_tasks(config.task)
    if jax.process_count() > 1 and tasks != ["pretrain"]:
        raise LimuBertError(f"config.task {config.task!r}: a run of {jax.process_count()} processes "
                            "pretrains only; run downstream tasks in one process")
    workdir = storage.as_path(workdir)
    check_outside_inputs(config, workdir)
    # Every stage is checked before the first one runs: a bad downstream field fails in
    # seconds, not after the pretraining before it. The checks run in `TASKS`' order
    # (pretraining's first), each distinct one once.
    data = load_data(config)
    for check in dict.fromkeys(task.check for task in TASKS.values() if task.name in tasks):
        check(config, workdir, tasks, data)
    shared = Shared(config, workdir, data)
    summary: dict[str, Any] = {}
    with WorkdirLock(workdir):
        for task in tasks:
            summary = TASKS[task].run(config, workdir, shared)
            if on_done is not None:
                on_done(task, summary)
    return summary
