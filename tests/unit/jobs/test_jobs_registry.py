from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sslclm.errors import ConfigurationError
from sslclm.jobs import Done, Next, NoRetry, Schedule, StepContext, TaskRegistry
from sslclm.jobs.registry import UnknownTaskError, load_task_modules


def test_task_with_steps() -> None:
    registry = TaskRegistry()

    @registry.task("demo.two-steps", retry=NoRetry())
    def first(ctx: StepContext) -> Next:
        """Starts the demo."""
        return Next("second")

    @first.step("second")
    def second(ctx: StepContext) -> Done:
        return Done()

    assert registry.get("demo.two-steps") is first
    assert list(first.steps) == ["start", "second"]
    assert first.retry.max_attempts == 1
    assert first.__doc__ == "Starts the demo."
    assert registry.kinds() == ["demo.two-steps"]
    assert "demo.two-steps" in registry


def test_names_are_checked_and_unique() -> None:
    registry = TaskRegistry()

    def step(ctx: StepContext) -> None:
        return None

    with pytest.raises(ValueError, match="task name"):
        registry.task("Bad Name")(step)
    created = registry.task("demo.once")(step)
    with pytest.raises(ValueError, match="already registered"):
        registry.task("demo.once")(step)
    with pytest.raises(ValueError, match="step name"):
        created.step("Not valid!")
    with pytest.raises(ValueError, match="already has a step"):
        created.step("start")(step)


def test_unknown_kind_is_a_clear_error() -> None:
    with pytest.raises(UnknownTaskError, match="no task kind 'nope'"):
        TaskRegistry().get("nope")


def test_periodic_registers_a_schedule() -> None:
    registry = TaskRegistry()

    @registry.periodic(every=timedelta(minutes=5), payload={"scope": "all"})
    @registry.task("demo.sweep")
    def sweep(ctx: StepContext) -> None:
        return None

    (schedule,) = registry.schedules()
    assert schedule == Schedule(
        name="demo.sweep", kind="demo.sweep", every=timedelta(minutes=5), payload={"scope": "all"}
    )


def test_a_module_that_does_not_import_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="cannot import task module 'no_such_module_x'"):
        load_task_modules(["no_such_module_x"], plugins=False)
    assert load_task_modules(["json"], plugins=False) == ["json"]


@pytest.mark.parametrize(
    ("every", "offset", "now", "due"),
    [
        (
            timedelta(minutes=5),
            timedelta(0),
            datetime(2030, 1, 1, 10, 7, 30, tzinfo=UTC),
            datetime(2030, 1, 1, 10, 5, tzinfo=UTC),
        ),
        (
            timedelta(minutes=5),
            timedelta(0),
            datetime(2030, 1, 1, 10, 5, tzinfo=UTC),
            datetime(2030, 1, 1, 10, 5, tzinfo=UTC),
        ),
        (
            timedelta(hours=1),
            timedelta(minutes=15),
            datetime(2030, 1, 1, 10, 10, tzinfo=UTC),
            datetime(2030, 1, 1, 9, 15, tzinfo=UTC),
        ),
        (
            timedelta(days=1),
            timedelta(hours=2),
            datetime(2030, 1, 1, 3, 0, tzinfo=UTC),
            datetime(2030, 1, 1, 2, 0, tzinfo=UTC),
        ),
    ],
)
def test_schedule_due_times_sit_on_a_fixed_grid(
    every: timedelta, offset: timedelta, now: datetime, due: datetime
) -> None:
    schedule = Schedule(name="grid", kind="demo", every=every, offset=offset)
    assert schedule.due_at(now) == due
    assert schedule.next_after(now) == due + every


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad Name"}, "schedule name"),
        ({"every": timedelta(milliseconds=10)}, "once a second"),
        ({"offset": timedelta(hours=2)}, "offset"),
    ],
)
def test_invalid_schedules_are_refused(kwargs: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"name": "ok", "kind": "demo", "every": timedelta(hours=1), **kwargs}
    with pytest.raises(ValueError, match=message):
        Schedule(**values)  # type: ignore[arg-type]
