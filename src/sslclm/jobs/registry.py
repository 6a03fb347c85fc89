"""Task kinds: a name, an ordered set of named step functions, and a retry strategy.

Task modules register their kinds with the ``@task`` decorator when imported. A worker imports
them from the ``sslclm.tasks`` entry-point group (built-ins and plugins alike) and from modules
named on its command line (``sslclm worker --import my.module``).
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable, Iterable
from datetime import timedelta
from importlib.metadata import entry_points
from typing import Any

from sslclm.errors import ConfigurationError, InvalidInputError
from sslclm.jobs.periodic import Schedule
from sslclm.jobs.queue import FIRST_STEP
from sslclm.jobs.retry import ExponentialBackoff, RetryStrategy
from sslclm.jobs.steps import Outcome, StepContext

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "sslclm.tasks"
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")

StepFunction = Callable[[StepContext], Outcome]
# Called with the failing step's context and the error line when a job of the task ends failed or
# cancelled, in the transaction that records it: the place to undo what earlier steps left behind.
FailureHook = Callable[[StepContext, str], None]


class UnknownTaskError(InvalidInputError):
    """No task of this kind is registered."""

    code = "unknown-task"


def _check_name(value: str, what: str) -> str:
    if not NAME.match(value):
        raise ValueError(f"{what} {value!r} must match {NAME.pattern}")
    return value


class Task:
    """A kind of job: its steps, run one at a time, each persisted before the next.

    Create one with :func:`task` (or :meth:`TaskRegistry.task`) and add further steps with
    :meth:`step`.
    """

    def __init__(self, name: str, first: StepFunction, *, retry: RetryStrategy) -> None:
        self.name = _check_name(name, "task name")
        self.retry = retry
        self.steps: dict[str, StepFunction] = {FIRST_STEP: first}
        self.failure_hook: FailureHook | None = None
        self.__doc__ = first.__doc__

    def step(self, name: str) -> Callable[[StepFunction], StepFunction]:
        """Registers the decorated function as the step called ``name`` (the same rules as the first)."""
        _check_name(name, "step name")

        def register(function: StepFunction) -> StepFunction:
            if name in self.steps:
                raise ValueError(f"task {self.name!r} already has a step {name!r}")
            self.steps[name] = function
            return function

        return register

    def on_failure(self, hook: FailureHook) -> FailureHook:
        """Registers ``hook`` to run when a job of this task ends failed or cancelled.

        It runs in the transaction that records the end, so what it writes commits with it (delete
        a key no certificate will use, mark the thing the job worked on as failed). It must not call
        the outside world; if it raises, the error is logged and the job is recorded without it.
        """
        if self.failure_hook is not None:
            raise ValueError(f"task {self.name!r} already has a failure hook")
        self.failure_hook = hook
        return hook

    def __repr__(self) -> str:
        return f"Task({self.name!r}, steps={list(self.steps)})"


class TaskRegistry:
    """Task kinds and periodic schedules known to this process."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._schedules: dict[str, Schedule] = {}

    def task(
        self,
        name: str,
        *,
        retry: RetryStrategy | None = None,
    ) -> Callable[[StepFunction], Task]:
        """Registers a task kind whose first step (named ``start``) is the decorated function.

        The contract every step function keeps (the first and those added with ``Task.step``):

        - It takes a :class:`~sslclm.jobs.steps.StepContext` and returns ``Next(step, state)``,
          ``Done(result)``, ``Wait(reason, delay=...)`` or ``None`` (same as ``Done()``).
        - It makes one change of state. Its database writes go through ``ctx.session`` and commit
          in one transaction with the job's move to the next step, so a worker killed *between*
          steps resumes at the next step and never repeats a finished one.
        - It is **idempotent**: a worker killed *inside* a step (or a lease lost to a stalled
          worker) means the step runs again from the start on another worker. Calls to the outside
          world must therefore be safe to repeat: pass a stable idempotency key (e.g. derived from
          ``ctx.job_id`` and the step name) to the CA, look for the result of an earlier try before
          acting again, create rows under unique keys.
        - It raises to fail. Whether the step is tried again is decided from the exception (see
          ``sslclm.jobs.retry``) and the task's retry strategy; a non-retryable error fails the job
          at once with its message.
        - On SQLite every writer waits for the one before it: do slow remote calls *before* the
          first write to ``ctx.session``, so the database is not locked while the call runs.
        - Step and task names are stored in job rows: never rename one that may be in flight.
        """

        def register(function: StepFunction) -> Task:
            created = Task(name, function, retry=retry or ExponentialBackoff())
            self.add(created)
            return created

        return register

    def add(self, created: Task) -> None:
        existing = self._tasks.get(created.name)
        if existing is not None and existing is not created:
            raise ValueError(f"task {created.name!r} is already registered")
        self._tasks[created.name] = created

    def get(self, kind: str) -> Task:
        try:
            return self._tasks[kind]
        except KeyError:
            raise UnknownTaskError(f"no task kind '{kind}' is registered", field="kind") from None

    def __contains__(self, kind: object) -> bool:
        return kind in self._tasks

    def kinds(self) -> list[str]:
        return sorted(self._tasks)

    def add_schedule(self, schedule: Schedule) -> None:
        if schedule.name in self._schedules and self._schedules[schedule.name] != schedule:
            raise ValueError(f"schedule {schedule.name!r} is already registered")
        self._schedules[schedule.name] = schedule

    def periodic(
        self,
        *,
        every: timedelta,
        name: str | None = None,
        payload: dict[str, Any] | None = None,
        offset: timedelta = timedelta(0),
    ) -> Callable[[Task], Task]:
        """Runs the decorated task every ``every`` (stack it above ``@task``).

        Each due time is enqueued once however many scheduler processes run (see
        ``sslclm.jobs.periodic``).
        """

        def register(target: Task) -> Task:
            self.add_schedule(
                Schedule(
                    name=name or target.name,
                    kind=target.name,
                    every=every,
                    payload=dict(payload or {}),
                    offset=offset,
                )
            )
            return target

        return register

    def schedules(self) -> list[Schedule]:
        return [self._schedules[key] for key in sorted(self._schedules)]


# The registry `@task` fills. Filling a dict is all that happens when a task module is imported.
default_registry = TaskRegistry()


def task(name: str, *, retry: RetryStrategy | None = None) -> Callable[[StepFunction], Task]:
    """``default_registry.task``; see :meth:`TaskRegistry.task` for the contract of a step."""
    return default_registry.task(name, retry=retry)


def periodic(
    *,
    every: timedelta,
    name: str | None = None,
    payload: dict[str, Any] | None = None,
    offset: timedelta = timedelta(0),
) -> Callable[[Task], Task]:
    """``default_registry.periodic``."""
    return default_registry.periodic(every=every, name=name, payload=payload, offset=offset)


def load_task_modules(modules: Iterable[str] = (), *, plugins: bool = True) -> list[str]:
    """Imports task modules so their ``@task`` decorators run; returns the names loaded.

    A module named explicitly that fails to import is a configuration error. A plugin from the
    entry-point group that fails is logged and skipped, so one broken plugin does not stop the
    worker from running every other kind.
    """
    loaded: list[str] = []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ConfigurationError(
                f"cannot import task module '{module}': {type(exc).__name__}: {exc}", field="import"
            ) from exc
        loaded.append(module)
    if plugins:
        for point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                point.load()
            except Exception as exc:
                log.error("task plugin %s (%s) failed to load: %s", point.name, point.value, exc)
                continue
            loaded.append(point.value)
    return loaded
