"""Many-tenant benchmark: T tenants x 1 file x R rows through the hourly run, on 1 and 2 instances.

    .venv/bin/python bench/scale_bench.py [--tenants 500] [--rows 1000] [--pg-url URL]

Per scenario (SQLite with one instance; PostgreSQL with one and with two instances sharing the
queue) it makes a fresh data dir and database, configures T tenants, lets ``orgsyncd`` create
the schema and the tenant directories (``jobs list``, not timed), drops one R-row roster into
every tenant's inbox (all with the same mtime: the moment of the upload), then starts the
instances, each one ``orgsyncd run-now`` (queue what the inboxes hold, then the hourly run), at
the same moment, and waits for all of them. It reports:

- wall time of the run (the instances started until the last one exited) and jobs/min;
- latency per job from its upload (the file's mtime) to its results file appearing in
  ``results/`` (the rename after the commit), p50 / p95 / max; and the per-job service time
  (the job's ``started_at`` to its results file);
- CPU seconds of the orgsyncd processes (user + system) and of the PostgreSQL backends serving
  the database (``import_bench.DbCpu``), beside the machine's busy CPU seconds over the run and
  its capacity (cores x wall), and the load average before and after;
- checks: every tenant has exactly one job, ``succeeded`` with R created and no errors, exactly
  one terminal state change per job, one results file per tenant; and how many jobs each
  instance ran.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

try:
    from bench import gen_roster, import_bench
except ImportError:  # run as a script: bench/ itself is on sys.path
    import gen_roster  # type: ignore[no-redef, import-not-found]
    import import_bench  # type: ignore[no-redef, import-not-found]

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
LICENSE = import_bench.LICENSE
TARGET_RUN_S = 60.0  # the hourly run of 500 tenants x 1 file x 1,000 rows, one instance
TARGET_SPEEDUP = 1.3  # two instances on one PostgreSQL, jobs/min against one
TARGET_TENANTS, TARGET_ROWS = 500, 1000


@dataclass
class Scenario:
    backend: str  # sqlite | postgresql
    instances: int

    @property
    def name(self) -> str:
        return f"{self.backend}-x{self.instances}"


@dataclass
class Outcome:
    scenario: Scenario
    wall_s: float
    exit_codes: list[int]
    orgsyncd_cpu_s: float
    db_cpu_s: float | None
    machine_busy_s: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    latencies: list[float] = field(default_factory=list)
    service_s: list[float] = field(default_factory=list)
    per_instance: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    jobs: int = 0

    @property
    def jobs_per_min(self) -> float:
        return self.jobs / self.wall_s * 60 if self.wall_s > 0 else 0.0


# --------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=TARGET_TENANTS)
    parser.add_argument("--rows", type=int, default=TARGET_ROWS, help="rows per tenant's file")
    parser.add_argument(
        "--pg-url",
        default=next((os.environ[v] for v in import_bench.PG_ENV_VARS if os.environ.get(v)), None),
        help="PostgreSQL server (default: $ORGSYNCD_BENCH_PG_URL / $ORGSYNCD_TEST_PG_URL); a "
        "throwaway database is created on it per scenario and dropped afterwards",
    )
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL scenarios only")
    parser.add_argument(
        "--instances",
        default="1,2",
        help="instance counts to run on PostgreSQL, comma-separated (SQLite always runs one)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="run every scenario this many times")
    parser.add_argument("--workdir", type=Path, help="where to put the run (default bench/out/)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and databases")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs orgsyncd")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the (first) instance under cProfile; the top of the profile is printed",
    )
    args = parser.parse_args(argv)
    args.instance_counts = sorted({int(n) for n in args.instances.split(",") if n.strip()})
    if args.tenants < 1 or args.rows < 1 or not args.instance_counts or min(args.instance_counts) < 1:
        parser.error("--tenants, --rows and --instances must be positive")
    if args.no_sqlite and not args.pg_url:
        parser.error("--no-sqlite needs --pg-url (or $ORGSYNCD_BENCH_PG_URL)")
    return args


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    found = [] if args.no_sqlite else [Scenario("sqlite", 1)]
    if args.pg_url:
        found += [Scenario("postgresql", n) for n in args.instance_counts]
    return found


# --------------------------------------------------------------------------- set-up


def tenant_names(count: int) -> list[str]:
    return [f"t{i:04d}" for i in range(count)]


def write_config(path: Path, data_dir: Path, database_url: str, tenants: list[str]) -> Path:
    body = (
        f"licenses = {{ {LICENSE} = 0 }}\n"
        f'default_license = "{LICENSE}"\n'
        'sync_mode = "delta"\n'
        "max_deactivation_ratio = 1.0\n"
    )
    lines = [
        "[daemon]",
        f"data_dir = {json.dumps(str(data_dir))}",
        f"database_url = {json.dumps(database_url)}",
        "",
        "[metrics]",
        "enabled = false",
        "",
    ]
    for name in tenants:
        lines += [f"[tenants.{name}]", body]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def generate_rosters(directory: Path, tenants: list[str], rows: int) -> dict[str, Path]:
    """One roster per tenant, each from its own seed (distinct people, distinct bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    files = {}
    for i, name in enumerate(tenants):
        files[name] = directory / f"{name}.csv"
        gen_roster.write_roster(files[name], rows, seed=i + 1)
    took = time.perf_counter() - started
    print(f"generated {len(files)} rosters of {rows:,} rows in {took:.1f} s", flush=True)
    return files


def upload(rosters: dict[str, Path], data_dir: Path) -> float:
    """Copy every roster into its tenant's inbox (a copy: the queue refuses a file with two
    links), all stamped with one mtime, which is returned: the moment of the upload."""
    for name, source in rosters.items():
        inbox = data_dir / "tenants" / name / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, inbox / "roster.csv")
    uploaded = time.time()
    for name in rosters:
        os.utime(data_dir / "tenants" / name / "inbox" / "roster.csv", (uploaded, uploaded))
    return uploaded


@contextlib.contextmanager
def database(s: Scenario, root: Path, args: argparse.Namespace) -> Iterator[str]:
    if s.backend == "sqlite":
        yield f"sqlite:///{root / 'data' / 'orgsyncd.db'}"
    else:
        with import_bench.pg_database(args.pg_url, args.keep) as url:
            yield url


# --------------------------------------------------------------------------- one run


def cli(args: argparse.Namespace, config: Path, *command: str, profile: Path | None = None) -> list[str]:
    prefix = [args.python]
    if profile is not None:
        prefix += ["-m", "cProfile", "-o", str(profile)]
    return [*prefix, "-m", "orgsyncd", "--config", str(config), *command]


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (every core; everyone's load)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return 0.0


def prepare(args: argparse.Namespace, config: Path, logs: Path) -> None:
    """Schema, tenant rows and directories: what a daemon does once at start, not per run."""
    started = time.perf_counter()
    child = subprocess.run(
        cli(args, config, "jobs", "list", "--limit", "1"),
        cwd=REPO,
        env=import_bench.child_env(),
        capture_output=True,
        text=True,
        timeout=args.timeout,
    )
    (logs / "prepare.err").write_text(child.stderr, encoding="utf-8")
    if child.returncode != 0:
        raise SystemExit(f"orgsyncd jobs list failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
    print(f"  set-up (migrations, {args.tenants} tenants): {time.perf_counter() - started:.1f} s", flush=True)


def run_instances(
    s: Scenario, args: argparse.Namespace, config: Path, logs: Path, db_url: str | None
) -> tuple[float, list[dict[str, Any]], float | None, float]:
    """Start every instance at once; wall time until the last exits, their measurements, the
    database backends' CPU seconds and the machine's busy CPU seconds meanwhile."""
    procs = []
    busy_before = machine_busy_s()
    started = time.perf_counter()
    with import_bench.DbCpu(db_url) as db_cpu:
        for i in range(s.instances):
            profile = logs / f"run-{i}.prof" if args.profile and i == 0 else None
            command = cli(args, config, "run-now", profile=profile)
            measured = logs / f"run-{i}.measure.json"
            helper = [sys.executable, "-I", "-S", str(import_bench.MEASURE_CHILD), str(measured), *command]
            env = import_bench.child_env() | {"ORGSYNCD_DAEMON__INSTANCE_NAME": f"bench-{i}"}
            with (logs / f"run-{i}.out").open("wb") as out, (logs / f"run-{i}.err").open("wb") as err:
                procs.append(
                    (
                        subprocess.Popen(
                            helper, stdout=out, stderr=err, cwd=REPO, env=env, start_new_session=True
                        ),
                        measured,
                    )
                )
        deadline = started + args.timeout
        for proc, _ in procs:
            import_bench._wait(proc, max(1.0, deadline - time.perf_counter()))
    wall = time.perf_counter() - started
    busy = machine_busy_s() - busy_before
    stats = [import_bench._read_measure(m) or {"returncode": p.returncode} for p, m in procs]
    return wall, stats, db_cpu.total, busy


def run_scenario(s: Scenario, args: argparse.Namespace, workdir: Path, rosters: dict[str, Path]) -> Outcome:
    root = Path(tempfile.mkdtemp(prefix=f"{s.name}-", dir=workdir))
    logs = root / "logs"
    logs.mkdir()
    data_dir = root / "data"
    tenants = list(rosters)
    print(f"[{s.name}] {len(tenants)} tenants x 1 file x {args.rows:,} rows, {s.instances} instance(s)")
    with database(s, root, args) as url:
        config = write_config(root / "orgsyncd.toml", data_dir, url, tenants)
        prepare(args, config, logs)
        uploaded = upload(rosters, data_dir)
        load_before = os.getloadavg()
        db_url = url if s.backend == "postgresql" else None
        wall, stats, db_cpu, busy = run_instances(s, args, config, logs, db_url)
        load_after = os.getloadavg()
        outcome = Outcome(
            scenario=s,
            wall_s=wall,
            exit_codes=[int(st.get("returncode", -1)) for st in stats],
            orgsyncd_cpu_s=sum(float(st.get("utime_s", 0)) + float(st.get("stime_s", 0)) for st in stats),
            db_cpu_s=db_cpu,
            machine_busy_s=busy,
            load_before=load_before,
            load_after=load_after,
        )
        collect(outcome, url, data_dir, tenants, uploaded, args.rows)
    for i, code in enumerate(outcome.exit_codes):
        if code != 0:
            tail = (logs / f"run-{i}.err").read_text(errors="replace").strip().splitlines()[-20:]
            outcome.problems.append(f"instance {i} exited {code}: " + " | ".join(tail))
    if args.profile:
        print_profile(logs / "run-0.prof")
    report(outcome)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return outcome


# --------------------------------------------------------------------------- what happened


def collect(o: Outcome, url: str, data_dir: Path, tenants: list[str], uploaded: float, rows: int) -> None:
    """Latencies and checks from the database and the results directories."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    jobs_q = text(
        "SELECT j.id, t.name, j.status, j.counts, j.started_at FROM job j JOIN tenant t ON t.id = j.tenant_id"
    )
    events_q = text(
        "SELECT job_id, actor FROM job_event WHERE to_status IN "
        "('succeeded', 'partially_succeeded', 'failed', 'held', 'duplicate')"
    )
    try:
        with engine.connect() as conn:
            jobs = conn.execute(jobs_q).all()
            events = conn.execute(events_q).all()
    finally:
        engine.dispose()
    o.jobs = len(jobs)
    by_tenant: dict[str, list[Any]] = {}
    for job in jobs:
        by_tenant.setdefault(job.name, []).append(job)
    terminal: dict[int, list[str]] = {}
    for job_id, actor in events:
        terminal.setdefault(int(job_id), []).append(str(actor))
    for name in tenants:
        found = by_tenant.get(name, [])
        if len(found) != 1:
            o.problems.append(f"tenant {name} has {len(found)} jobs, expected 1")
            continue
        check_job(o, found[0], terminal.get(int(found[0].id), []), rows)
        results = sorted((data_dir / "tenants" / name / "results").glob("*.results.csv"))
        if len(results) != 1:
            o.problems.append(f"tenant {name} has {len(results)} results files, expected 1")
            continue
        appeared = results[0].stat().st_ctime  # the rename into results/, after the commit
        o.latencies.append(appeared - uploaded)
        if found[0].started_at is not None:
            o.service_s.append(appeared - _epoch(found[0].started_at))
    for actors in terminal.values():
        for actor in actors:
            o.per_instance[actor] = o.per_instance.get(actor, 0) + 1


def check_job(o: Outcome, job: Any, actors: list[str], rows: int) -> None:
    counts = json.loads(job.counts) if isinstance(job.counts, str) else (job.counts or {})
    if job.status != "succeeded" or counts.get("created") != rows or counts.get("error"):
        o.problems.append(f"job {job.id} ({job.name}): {job.status}, counts {counts}")
    if len(actors) != 1:
        o.problems.append(f"job {job.id} ({job.name}) has {len(actors)} outcomes: {actors}")


def _epoch(value: datetime | str) -> float:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]


def print_profile(path: Path) -> None:
    import pstats

    if path.exists():
        print(f"  profile: {path}")
        pstats.Stats(str(path)).sort_stats("cumulative").print_stats(40)


# --------------------------------------------------------------------------- report


def cpu_text(o: Outcome) -> str:
    db = "" if o.db_cpu_s is None else f" + {o.db_cpu_s:.1f} db"
    return f"{o.orgsyncd_cpu_s:.1f}{db}"


def report(o: Outcome) -> None:
    lat, svc = o.latencies, o.service_s
    print(
        f"  {o.jobs} jobs in {o.wall_s:.1f} s = {o.jobs_per_min:,.0f} jobs/min; upload->results "
        f"p50 {percentile(lat, 50):.1f} s, p95 {percentile(lat, 95):.1f} s, max {max(lat, default=0):.1f} s; "
        f"per job {statistics.fmean(svc) if svc else float('nan'):.3f} s (mean start->results); "
        f"CPU s orgsyncd {cpu_text(o)}, machine busy {o.machine_busy_s:.1f} of "
        f"{os.cpu_count()} x {o.wall_s:.1f} = {(os.cpu_count() or 1) * o.wall_s:.1f}; "
        f"load {o.load_before[0]:.2f} -> {o.load_after[0]:.2f}",
        flush=True,
    )
    if o.per_instance:
        print("  jobs per instance: " + ", ".join(f"{k}: {v}" for k, v in sorted(o.per_instance.items())))
    for problem in o.problems[:20]:
        print(f"  PROBLEM: {problem}", flush=True)
    if len(o.problems) > 20:
        print(f"  ... and {len(o.problems) - 20} more problems")


def verdicts(outcomes: list[Outcome], tenants: int, rows: int) -> list[str]:
    lines = []
    at_target = tenants == TARGET_TENANTS and rows == TARGET_ROWS
    scale = "" if at_target else f" (target is for {TARGET_TENANTS} x {TARGET_ROWS:,}; not judged)"
    for o in outcomes:
        if o.scenario.instances == 1:
            met = "met" if o.wall_s <= TARGET_RUN_S and not o.problems else "MISSED"
            lines.append(
                f"{o.scenario.backend}, 1 instance: run {o.wall_s:.1f} s (target ≤ {TARGET_RUN_S:.0f} s): "
                f"{met if at_target else '-'}{scale}"
            )
    best_one = {
        o.scenario.backend: o.jobs_per_min
        for o in sorted(outcomes, key=lambda o: o.jobs_per_min)
        if o.scenario.instances == 1 and not o.problems
    }
    for o in outcomes:
        one = best_one.get(o.scenario.backend)
        if o.scenario.instances > 1 and one:
            ratio = o.jobs_per_min / one
            busy = o.machine_busy_s / ((os.cpu_count() or 1) * o.wall_s)
            lines.append(
                f"{o.scenario.backend}, {o.scenario.instances} instances: {ratio:.2f}x the jobs/min of one "
                f"(target ≥ {TARGET_SPEEDUP}x): "
                f"{('met' if ratio >= TARGET_SPEEDUP else 'MISSED') if at_target else '-'}{scale}; "
                f"orgsyncd + db CPU {o.orgsyncd_cpu_s + (o.db_cpu_s or 0):.1f} s over {o.wall_s:.1f} s "
                f"wall = {(o.orgsyncd_cpu_s + (o.db_cpu_s or 0)) / o.wall_s:.2f} cores; machine "
                f"{busy:.0%} busy"
            )
    return lines


def markdown_table(outcomes: list[Outcome]) -> str:
    lines = [
        "| backend | instances | wall s | jobs/min | latency p50 / p95 s | CPU s orgsyncd + db | "
        "machine busy / capacity s | load 1 min | checks |",
        "|---|---:|---:|---:|---|---:|---|---|---|",
    ]
    for o in outcomes:
        capacity = (os.cpu_count() or 1) * o.wall_s
        lines.append(
            f"| {o.scenario.backend} | {o.scenario.instances} | {o.wall_s:.1f} | {o.jobs_per_min:,.0f} | "
            f"{percentile(o.latencies, 50):.1f} / {percentile(o.latencies, 95):.1f} | {cpu_text(o)} | "
            f"{o.machine_busy_s:.0f} / {capacity:.0f} | {o.load_before[0]:.1f} → {o.load_after[0]:.1f} | "
            f"{'ok' if not o.problems else f'{len(o.problems)} problem(s)'} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def make_workdir(args: argparse.Namespace) -> Path:
    parent = args.workdir or BENCH_DIR / "out"
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("scale-%Y%m%d-%H%M%S-"), dir=parent))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = make_workdir(args)
    print(
        f"orgsyncd: {import_bench.describe_code()}; python {platform.python_version()}; "
        f"{platform.platform()}; {os.cpu_count()} CPUs; run {secrets.token_hex(2)}"
    )
    print(f"work dir: {workdir}", flush=True)
    outcomes: list[Outcome] = []
    try:
        rosters = generate_rosters(workdir / "rosters", tenant_names(args.tenants), args.rows)
        for _ in range(args.rounds):
            for s in scenarios(args):
                outcomes.append(run_scenario(s, args, workdir, rosters))
    finally:
        if args.keep:
            print(f"kept work dir {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(markdown_table(outcomes))
    for line in verdicts(outcomes, args.tenants, args.rows):
        print(line)
    return 0 if all(not o.problems for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
