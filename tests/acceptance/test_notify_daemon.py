"""The daemon sends notifications: killed -9 between a job's state change and the send, it sends
the event once after the restart; a webhook and an email arrive for a held and a failed job."""

from __future__ import annotations

from pathlib import Path

from tests.acceptance.conftest import Daemons, Site
from tests.helpers import LIC, roster
from tests.receivers import SECRET, body_text, smtp_sink, webhook_receiver

HEADER = ["primary_email_address", f"{LIC}_status"]


def notify_config(site: Site, hook_url: str, mail_url: str) -> None:
    secret = site.root / "webhook.secret"
    secret.write_bytes(SECRET)
    text = site.config.read_text(encoding="utf-8")
    text = text.replace(
        "[tenants.acme]",
        f'[notify]\nwebhook_url = "{hook_url}"\nwebhook_secret_file = "{secret}"\n'
        f'urls = ["{mail_url}"]\nretry_base_s = 0.5\n\n[tenants.acme]',
    )
    site.config.write_text(text, encoding="utf-8")


def test_killed_after_the_state_change_the_event_is_sent_once_after_restart(
    daemons: Daemons, site: Site, tmp_path: Path
) -> None:
    with webhook_receiver() as hook, smtp_sink() as smtp:
        notify_config(site, hook.url, smtp.url())
        site.inbox().mkdir(parents=True)
        rows = roster(HEADER, [["ok@example.com", "active"], ["not-an-email", "active"]])
        (site.inbox() / "day.csv").write_text(rows, encoding="utf-8")  # partially_succeeded
        # The start-up catch-up run applies the job, commits, and the process dies right there.
        first = daemons.start(
            ["--config", str(site.config)], env={"ORGSYNCD_FAULT": "after_commit:kill"}, ready=False
        )
        assert first.proc.wait(30) == -9
        assert site.job("day.csv")[2] == "partially_succeeded"  # type: ignore[index]
        assert hook.requests == [] and smtp.messages == []
        assert site.db("SELECT status FROM notify_event") == [("new",)]

        second = daemons.start(["--config", str(site.config)])
        [body] = hook.wait_for(1)
        [mail] = smtp.wait_for(1)
        assert body["event"] == "partially_succeeded" and hook.requests[0].signed
        assert body["counts"]["created"] == 1 and body["counts"]["error"] == 1
        assert "partially succeeded" in mail["Subject"] and "1 created, 1 error" in body_text(mail)
        second.wait_event("notify_sent", destination="webhook")
        assert second.stop() == 0
    assert len(hook.requests) == 1 and len(smtp.messages) == 1
    assert site.db("SELECT status, attempts FROM notify_delivery ORDER BY id") == [("sent", 1), ("sent", 1)]


def test_a_held_job_run_from_the_cli_is_announced_by_webhook_and_email(site: Site) -> None:
    with webhook_receiver() as hook, smtp_sink() as smtp:
        notify_config(site, hook.url, smtp.url())
        site.config.write_text(
            site.config.read_text(encoding="utf-8").replace(
                "max_deactivation_ratio = 1.0", "max_deactivation_ratio = 0.1"
            ),
            encoding="utf-8",
        )
        first = site.root / "all.csv"
        first.write_text(
            roster(HEADER, [[f"p{i}@example.com", "active"] for i in range(10)]), encoding="utf-8"
        )
        assert site.cli("import", str(first), "--tenant", "acme").returncode == 0
        half = site.root / "half.csv"
        half.write_text(roster(HEADER, [[f"p{i}@example.com", "active"] for i in range(5)]), encoding="utf-8")
        held = site.cli("import", str(half), "--tenant", "acme", "--mode", "full")
        assert held.returncode == 1 and "is held" in held.stderr
        [body] = hook.delivered()  # sent before the command returned
        [mail] = smtp.wait_for(1)
    assert body["event"] == "held" and body["file"] == "half.csv"
    assert "held" in mail["Subject"] and f"orgsyncd jobs approve {body['job_id']}" in body_text(mail)
