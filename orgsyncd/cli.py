"""The command line. Our errors become one sentence on stderr and an exit code (0 ok, 1 failed,
2 bad usage or config); a traceback only with --debug."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from orgsyncd.codes import where_to_read
from orgsyncd.config import Settings, load_settings
from orgsyncd.core.results import Summary, iso
from orgsyncd.dbhealth import DatabaseUnavailable, database_unavailable
from orgsyncd.errors import OrgsyncError, UsageError
from orgsyncd.logging import configure_logging, machine_readable
from orgsyncd.paths import result_paths
from orgsyncd.progress import Bar
from orgsyncd.service import Service
from orgsyncd.store.jobs import STATUSES, JobRecord, cli_actor, running_text

F = TypeVar("F", bound=Callable[..., Any])
FAILED_STATUSES = ("failed", "held")


class AppContext:
    def __init__(self, config: str | None, debug: bool) -> None:
        self.config_path = config
        self.debug = debug
        self._settings: Settings | None = None
        self._service: Service | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
        return self._settings

    @property
    def service(self) -> Service:
        if self._service is None:
            self._service = Service(self.settings)
            self._service.migrate()
        return self._service

    def close(self) -> None:
        if self._service is not None:
            self._service.close()


pass_app = click.make_pass_decorator(AppContext)


class OrgsyncGroup(click.Group):
    """Turns our exceptions into one sentence and an exit code, at the very edge."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OrgsyncError as exc:
            app = ctx.find_object(AppContext)
            if app is not None and app.debug:
                raise
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; nothing half-done was kept", 1)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            # `orgsyncd jobs list | head`: the reader has gone, which is not an error to report.
            # Python flushes stdout again at exit; point it at /dev/null so that flush is quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except Exception as exc:
            app = ctx.find_object(AppContext)
            if app is not None and app.debug:
                raise
            unreachable = database_unavailable(exc)
            if unreachable is not None:  # not a bug: say what to look at, in one line
                _fail(str(DatabaseUnavailable(unreachable)), 1)
            _fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)", 1)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"orgsyncd: {message}", err=True)
    sys.exit(code)


@click.group(cls=OrgsyncGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config",
    metavar="PATH",
    help="Config file (default: $ORGSYNCD_CONFIG, /etc/orgsyncd/orgsyncd.toml, built-in demo defaults).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="orgsyncd")
@click.pass_context
def main(ctx: click.Context, config: str | None, debug: bool) -> None:
    """orgsyncd: roster files in over SFTP, learners and licences out."""
    # On a terminal the command's own output says what happened; log lines would say it again.
    quiet = "error" if not machine_readable(sys.stderr) else "warning"
    configure_logging(level="debug" if debug else quiet, json=machine_readable(sys.stderr), stream=sys.stderr)
    app = AppContext(config, debug)
    ctx.obj = app
    ctx.call_on_close(app.close)


# -- import / run-now -----------------------------------------------------------------------


@main.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--tenant", "-t", required=True, help="Tenant name as configured.")
@click.option("--mode", type=click.Choice(["full", "delta"]), help="Override the sync mode.")
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@pass_app
def import_cmd(app: AppContext, file: Path, tenant: str, mode: str | None, dry_run: bool) -> None:
    """Run one import now, in the foreground, and print its summary (JSON when not on a terminal)."""
    with Bar(_size(file), f"importing {file.name}") as bar:
        summary = app.service.import_file(
            tenant, file, mode=mode, dry_run=dry_run, progress=bar.to, actor=cli_actor()
        )
        if "error" in summary.extra:
            bar.discard()  # the sentence below says why; a half-full bar would only distract
        else:
            bar.done()
    _print_summary(summary, app)
    app.service.send_notifications()
    if summary.status in FAILED_STATUSES:
        _fail(_failure_sentence(summary), 1)


def _size(file: Path) -> int:
    try:
        return file.stat().st_size
    except OSError:
        return 0  # import_file says what is wrong with it


def _print_summary(summary: Summary, app: AppContext) -> None:
    results = None
    if summary.job_id is not None:
        results = result_paths(app.service.dirs(summary.tenant), summary.file, summary.job_id)[0]
    if not sys.stdout.isatty():
        click.echo(json.dumps(summary.as_dict(), indent=2, ensure_ascii=False))
        if results is not None:
            click.echo(f"results: {results}", err=True)
        return
    if "error" in summary.extra:
        return  # a rejected file is said once, by the failure sentence (its results say the same)
    click.echo(_summary_line(summary))
    if results is not None:
        click.echo(f"results: {results}")


def _summary_line(summary: Summary) -> str:
    """``day1.csv: partially_succeeded (job 3, tenant demo, delta): 2 created, 1 error``"""
    counts = ", ".join(f"{n} {outcome}" for outcome, n in summary.counts.items() if n) or "no rows"
    if summary.job_id is None:
        where = f"tenant {summary.tenant}, {summary.mode}"
        return f"{summary.file}: dry run ({where}), nothing changed; it would be: {counts}"
    where = f"job {summary.job_id}, tenant {summary.tenant}, {summary.mode}"
    if summary.status == "held":
        return f"{summary.file}: held ({where}), nothing applied yet; it would be: {counts}"
    return f"{summary.file}: {summary.status} ({where}): {counts}"


def _failure_sentence(summary: Summary) -> str:
    if summary.status == "held":
        reason = summary.extra.get("message", "threshold exceeded")
        if summary.job_id is None:
            return f"{summary.file} would be held (threshold_exceeded): {reason}"
        return f"job {summary.job_id} is held: {reason}"
    error = summary.extra.get("error")
    if error:
        code = error["code"]
        return f"{summary.file} was rejected ({code}): {error['message']}; see {where_to_read(code)}"
    return "every row of the file failed; see the results file"


@main.command("run-now")
@click.option("--tenant", "-t", help="Only this tenant.")
@click.option("--daily", is_flag=True, help="Also take jobs deferred to the daily run.")
@pass_app
def run_now(app: AppContext, tenant: str | None, daily: bool) -> None:
    """Process queued jobs now, as the hourly run would (files in inboxes are queued first)."""
    service = app.service
    service.scan_inboxes(tenant)
    results = service.run_due("daily" if daily else "hourly", tenant)
    for result in results:
        click.echo(f"job {result.job_id}  {result.tenant}  {result.file}  {result.status}")
    waiting = service.queue_depth()
    click.echo(f"{len(results)} job(s) processed; {waiting} still queued", err=True)
    for job in service.jobs.recent(tenant=tenant, status="running"):
        # another instance's (or one whose instance died: its lease runs out, then it runs again)
        click.echo(f"job {job.id}  {job.tenant}  {job.file_name}  {running_text(job)}", err=True)
    service.send_notifications()
    if any(r.status == "failed" for r in results):
        sys.exit(1)


# -- jobs -------------------------------------------------------------------------------------


@main.group()
def jobs() -> None:
    """Job history and operator actions."""


@jobs.command("list")
@click.option("--tenant", "-t")
@click.option("--status", "-s", type=click.Choice(STATUSES))
@click.option("--limit", default=50, show_default=True)
@pass_app
def jobs_list(app: AppContext, tenant: str | None, status: str | None, limit: int) -> None:
    """Recent jobs, newest first."""
    rows = app.service.jobs.recent(tenant=tenant, status=status, limit=limit)
    click.echo(f"{'ID':>6}  {'TENANT':<16} {'STATUS':<20} {'RECEIVED':<21} FILE")
    for job in rows:
        line = (
            f"{job.id:>6}  {job.tenant:<16} {job.status:<20} {iso(job.received_at) or '':<21} {job.file_name}"
        )
        if job.status == "running":
            line += f"  ({running_text(job)})"
        click.echo(line)


@jobs.command("show")
@click.argument("job_id", type=int)
@pass_app
def jobs_show(app: AppContext, job_id: int) -> None:
    """One job in full: its files, and every state change it went through (JSON)."""
    store = app.service.jobs
    job = store.get(job_id)
    data = _job_json(job)
    data["files"] = app.service.job_files(job)
    if job.status in ("queued", "running"):
        data["progress"] = app.service.job_progress(job)
    data["events"] = [
        {
            "at": iso(event.at),
            "from": event.from_status,
            "to": event.to_status,
            "actor": event.actor,
            "code": event.code,
            "message": event.message,
        }
        for event in store.events(job_id)
    ]
    data["decisions"] = [record.as_dict() for record in app.service.decisions.of_job(job_id)]
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _job_json(job: JobRecord) -> dict[str, Any]:
    data = asdict(job)
    for key in ("claim_token", "db_session"):  # internal to the claim
        data.pop(key)
    if job.finalized:  # the spooled copy is gone; files.input says where the upload is now
        data.pop("spool_path")
    if job.status == "running":  # who has it, since when, and until when unless renewed
        data["running"] = running_text(job)
    for key in ("received_at", "started_at", "finished_at", "claimed_at", "lease_expires_at", "file_time"):
        data[key] = iso(data[key])
    data["columns"] = json.loads(job.columns) if job.columns else None
    return data


@jobs.command("approve")
@click.argument("job_id", type=int)
@pass_app
def jobs_approve(app: AppContext, job_id: int) -> None:
    """Release a held job: it is queued again ahead of the tenant's other jobs."""
    job = app.service.approve(job_id, cli_actor())
    app.service.send_notifications()
    click.echo(
        f"job {job.id} approved; it applies at the next run (or 'orgsyncd run-now --tenant {job.tenant}')"
    )


@jobs.command("reject")
@click.argument("job_id", type=int)
@pass_app
def jobs_reject(app: AppContext, job_id: int) -> None:
    """Drop a held job; nothing of it is applied."""
    job = app.service.reject(job_id, cli_actor())
    app.service.send_notifications()
    click.echo(f"job {job.id} rejected")


@jobs.command("retry")
@click.argument("job_id", type=int)
@pass_app
def jobs_retry(app: AppContext, job_id: int) -> None:
    """Queue a failed job again (e.g. after fixing the tenant's configuration)."""
    job = app.service.retry(job_id, cli_actor())
    click.echo(f"job {job.id} queued again")


@jobs.command("revert")
@click.argument("job_id", type=int)
@click.option("--dry-run", is_flag=True, help="Print what would be restored (CSV); change nothing.")
@click.option("--force", is_flag=True, help="Revert even learners that later jobs changed too.")
@pass_app
def jobs_revert(app: AppContext, job_id: int, dry_run: bool, force: bool) -> None:
    """Undo an applied job: every learner it changed goes back to how it was (a new job)."""
    out = sys.stdout if dry_run else None
    result = app.service.revert(job_id, cli_actor(), force=force, dry_run=dry_run, out=out)
    if dry_run:
        verb = "would restore" if result.status == "succeeded" else "would be refused:"
        detail = (
            f"{result.restored} learner(s) and deactivate {result.deactivated} it created"
            if result.status == "succeeded"
            else result.message
        )
        click.echo(f"dry run: job {result.target} {verb} {detail}; nothing was changed", err=True)
        return
    click.echo(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
    results = app.service.dirs(result.tenant).results
    click.echo(f"results: {results}/revert-{result.target}.{result.job_id}.results.csv", err=True)
    if result.status != "succeeded":
        _fail(f"job {result.job_id} did not revert job {result.target} ({result.code}): {result.message}", 1)


# -- export / learners --------------------------------------------------------------------------


@main.command("export")
@click.option("--tenant", "-t", required=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File to write (default: stdout).",
)
@pass_app
def export_cmd(app: AppContext, tenant: str, output: Path | None) -> None:
    """Write the tenant's roster in the import format."""
    service = app.service
    if output is None:
        service.export(tenant, sys.stdout)
        return
    tmp = output.with_name(f".{output.name}.tmp")
    total = service.learners.count(service.jobs.tenant_id(tenant))
    with (
        tmp.open("w", encoding="utf-8", newline="") as out,
        Bar(total, f"exporting {tenant}") as bar,
    ):
        count = service.export(tenant, out, progress=bar.to)
        bar.done()
    tmp.replace(output)
    click.echo(f"{count} learners written to {output}", err=True)


@main.group()
def learners() -> None:
    """Look learners up."""


@learners.command("list")
@click.option("--tenant", "-t", required=True)
@click.option("--status", type=click.Choice(["invited", "unassigned", "deactivated"]))
@click.option("--limit", default=100, show_default=True)
@click.option("--offset", default=0)
@pass_app
def learners_list(app: AppContext, tenant: str, status: str | None, limit: int, offset: int) -> None:
    """Learners of a tenant, by email."""
    app.settings.tenant(tenant)
    tenant_id = app.service.jobs.tenant_id(tenant)
    rows = app.service.learners.page(tenant_id, status=status, limit=limit, offset=offset)
    click.echo(f"{'EMAIL':<40} {'STATUS':<12} {'LICENSE':<42} GROUPS")
    for learner in rows:
        click.echo(
            f"{learner.email:<40} {learner.status:<12} {learner.license_type or '-':<42} {', '.join(learner.groups)}"
        )
    total = app.service.learners.count(tenant_id)
    click.echo(f"{len(rows)} of {total} learners shown", err=True)


@learners.command("show")
@click.argument("email")
@click.option("--tenant", "-t", required=True)
@pass_app
def learners_show(app: AppContext, email: str, tenant: str) -> None:
    """One learner with licence and change history (JSON)."""
    app.settings.tenant(tenant)
    store = app.service.learners
    learner = store.find(app.service.jobs.tenant_id(tenant), email)
    data: dict[str, Any] = asdict(learner)
    data["licence_history"] = [
        {**asdict(span), "started_at": iso(span.started_at), "ended_at": iso(span.ended_at)}
        for span in store.licence_history(learner.id)
    ]
    data["changes"] = [{**asdict(event), "at": iso(event.at)} for event in store.audit(learner.id)]
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


# -- tenants ------------------------------------------------------------------------------------


@main.group()
def tenants() -> None:
    """Tenants as configured."""


@tenants.command("list")
@pass_app
def tenants_list(app: AppContext) -> None:
    """Configured tenants and their settings."""
    settings = app.settings
    click.echo(f"config: {settings.source}", err=True)
    for name, cfg in sorted(settings.tenants.items()):
        seats = (
            ", ".join(f"{lic}={n or 'unlimited'}" for lic, n in sorted(cfg.licenses.items())) or "no licenses"
        )
        click.echo(f"{name:<16} mode={cfg.sync_mode:<5} cadence={cfg.cadence:<6} {seats}")


@tenants.command("check")
@pass_app
def tenants_check(app: AppContext) -> None:
    """Validate config, keys, directories and database."""
    from orgsyncd.checks import check_tenants

    problems = check_tenants(app.settings)
    for line in problems.notes:
        click.echo(f"ok    {line}")
    for line in problems.errors:
        click.echo(f"FAIL  {line}")
    if problems.errors:
        _fail(f"{len(problems.errors)} problem(s) found", 1)


@tenants.command("suggest-mapping")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--tenant", "-t", help="The tenant it is for (its default licence sets the status column).")
@pass_app
def tenants_suggest_mapping(app: AppContext, file: Path, tenant: str | None) -> None:
    """Draft a tenant's columns/values/delimiter/encoding from a file the HRIS made (TOML to paste)."""
    from orgsyncd.suggest import render, suggest

    status = None
    if tenant is not None:
        cfg = app.settings.tenant(tenant)
        status = f"{cfg.default_license}_status" if cfg.default_license else None
    click.echo(render(suggest(file, tenant or "NAME", status)), nl=False)


@main.command("serve")
@pass_app
def serve(app: AppContext) -> None:
    """Run the daemon: SFTP + watcher + scheduler; logs on stdout (JSON lines unless a terminal)."""
    from orgsyncd.daemon import run_daemon

    json_lines = machine_readable(sys.stdout)
    configure_logging(level="debug" if app.debug else "info", json=json_lines, stream=sys.stdout)
    # The path, not just the settings: SIGHUP reads the same file again.
    sys.exit(run_daemon(app.settings, config_path=app.config_path))


@main.command("hash-password")
def hash_password_cmd() -> None:
    """Print the scrypt hash of a password, for a tenant's password_hash.

    Prompts twice on a terminal; otherwise reads the first line of stdin, so the password never
    appears in the process list or the shell history.
    """
    from orgsyncd.ingest.auth import hash_password

    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("the password is empty")
    click.echo(hash_password(password))
