"""The ``sslclm`` command: one root group, and the one place where errors become exit codes.

Every failure leaves as a single ``error: <message>`` line on stderr, exit status 1 (2 for usage
errors), never a traceback: an operator's script can test the status and a person reads one line.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import pydantic
import typer

# Typer ships its own copy of Click; its exceptions are the ones raised here, not the `click` package's.
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

from sslclm import __version__
from sslclm.errors import SslClmError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _fail(message: str, code: int) -> int:
    first_line = " ".join(message.strip().split("\n")[:1]) or "failed"
    typer.echo(f"error: {first_line}", err=True)
    return code


def _validation_message(exc: pydantic.ValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid input"}
    field = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid input"))
    return f"{field.replace('_', '-')}: {message}" if field else message


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (e.g. under a test runner)
        pass


def run_guarded(invoke: Callable[[], Any]) -> int:
    """Runs a command (in non-standalone mode) and turns every outcome into an exit status."""
    try:
        result = invoke()
    except NoArgsIsHelpError as exc:
        # A bare group (`sslclm user`) shows its help, as --help would, but exits as a usage error.
        text = exc.format_message()
        if text:
            typer.echo(text, err=True)
        return EXIT_USAGE
    except UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return _fail(exc.format_message() + hint, EXIT_USAGE)
    except (ClickException, typer.TyperException) as exc:
        return _fail(exc.format_message(), exc.exit_code)
    except typer.Abort:
        return _fail("aborted", EXIT_ERROR)
    except SslClmError as exc:
        return _fail(exc.message, EXIT_ERROR)
    except pydantic.ValidationError as exc:
        return _fail(_validation_message(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            # The reader went away (`sslclm certs export | head`): nothing left to tell anyone, and
            # the interpreter's final flush must not complain about the closed pipe either.
            _silence_stdout()
            return EXIT_ERROR
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}", EXIT_ERROR)
    except Exception as exc:
        if os.environ.get("SSLCLM_DEBUG") == "1":
            raise  # a developer chasing a bug wants the traceback
        return _fail(
            f"unexpected {type(exc).__name__}: {exc} (SSLCLM_DEBUG=1 shows the traceback)", EXIT_ERROR
        )
    return result if isinstance(result, int) else 0


class RootGroup(TyperGroup):
    """The root command; its ``main`` is where Typer, the test runner and the console script all enter."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        code = run_guarded(
            lambda: TyperGroup.main(
                self,
                args=args,
                prog_name=prog_name or "sslclm",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        )
        if standalone_mode:
            sys.exit(code)
        return code


def build_app() -> typer.Typer:
    from sslclm.cli import (
        agent_stores,
        agents,
        certs,
        db,
        deploy,
        jobs,
        key_export,
        policy,
        report,
        scan,
        serve,
        stores,
        users,
        workflows,
    )

    app = typer.Typer(
        name="sslclm",
        help="SSL-CLM: certificate lifecycle management. Settings come from SSLCLM_* environment variables.",
        cls=RootGroup,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback(invoke_without_command=False)
    def _root(
        version: Annotated[
            bool,
            typer.Option(
                "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
            ),
        ] = False,
    ) -> None:
        """SSL-CLM: inventory, policy, issuance, deployment and renewal of certificates."""

    serve.register(app)
    app.add_typer(db.app, name="db")
    app.add_typer(users.user_app, name="user")
    app.add_typer(users.token_app, name="token")
    app.add_typer(users.audit_app, name="audit")
    certs.register(app)
    key_export.register(certs.certs_app)
    jobs.register(app)
    scan.register(app)
    workflows.register(app)
    stores.register(app)
    agent_stores.register(stores.store_app)
    deploy.register(app)
    policy.register(app)
    report.register(app)
    app.add_typer(agents.agents_app, name="agents")
    app.add_typer(agents.agent_app, name="agent")
    return app


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"sslclm {__version__}")
        raise typer.Exit(0)


def main(argv: Sequence[str] | None = None) -> None:
    # Guarded too: a command module that fails to load must not print a traceback either.
    sys.exit(
        run_guarded(
            lambda: typer.main.get_command(build_app()).main(
                args=argv, prog_name="sslclm", standalone_mode=False
            )
        )
    )
