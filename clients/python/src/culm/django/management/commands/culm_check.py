"""`manage.py culm_check`: the job names this service uses exist in the culm it talks to."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from culm.django import client, settings_dict, used_job_names


class Command(BaseCommand):
    help = "Checks settings.CULM['JOBS'] (and names enqueued in this process) against culm's /v1/job-types."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("jobs", nargs="*", help="More job names to check.")

    def handle(self, *args: Any, **options: Any) -> None:
        names = set(settings_dict().get("JOBS", [])) | used_job_names() | set(options.get("jobs") or [])
        if not names:
            raise CommandError("no job names to check: set settings.CULM['JOBS']")
        known = {t.name: t for t in client().job_types()}
        missing = sorted(n for n in names if n not in known)
        if missing:
            raise CommandError(
                "unknown to culm at {}: {} (see GET /v1/job-types)".format(client().base_url, ", ".join(missing))
            )
        for n in sorted(names):
            t = known[n]
            self.stdout.write(f"ok  {n}  queue={t.queue} tiers={','.join(t.tiers)}")
