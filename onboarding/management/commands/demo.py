"""`manage.py demo`: the whole portal on one machine, with no servers to install.

Migrates the embedded SQLite database, seeds demo users and hospitals, then runs three sandbox
hospitals, one Celery worker (with beat for the reaper and the sweep) and the web server, until
Ctrl-C stops them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from onboarding import demo


class Command(BaseCommand):
    help = "Run the demo: portal, one Celery worker and sandbox hospitals on the embedded default."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--addr", default="127.0.0.1:8000", help="Where the web server listens.")
        parser.add_argument("--no-web", action="store_true", help="Start everything but the web server.")
        parser.add_argument(
            "--codes",
            action="store_true",
            help="Only print fresh backup codes for the demo's vendor staff and exit (the old ones stop working); "
            "run it in a second terminal when a running demo's codes are used up.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.PRODUCTION:
            raise CommandError("The demo runs only in the embedded mode (PORTAL_MODE=embedded).")
        call_command("migrate", interactive=False, verbosity=0)
        logins = demo.seed()
        codes = demo.backup_codes()
        if options["codes"]:
            self._codes(codes)
            return
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        children: list[subprocess.Popen[bytes]] = []
        try:
            for sandbox in demo.SANDBOXES:
                command = [sys.executable, manage, "sandbox", *sandbox.command()]
                children.append(subprocess.Popen(command))
            beat_schedule = str(Path(settings.VAR_DIR) / "celerybeat-schedule")
            children.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "portal",
                        "worker",
                        "-B",
                        "-s",
                        beat_schedule,
                        "-Q",
                        # Every queue a task is routed to (steps, load tests, monitoring...), so the
                        # one demo worker runs all of them and a new queue cannot be left unserved.
                        ",".join(sorted({route["queue"] for route in settings.CELERY_TASK_ROUTES.values()})),
                        "-c",
                        "2",
                        "-l",
                        "warning",
                    ],
                    env={
                        **os.environ,
                        "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "portal.settings"),
                    },
                )
            )
            time.sleep(2)
            self._banner(options["addr"], logins, codes)
            if options["no_web"]:
                signal.pause()
            else:
                call_command("runserver", options["addr"], use_reloader=False)
        except KeyboardInterrupt:
            pass
        finally:
            for child in children:
                child.terminate()
            for child in children:
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()

    def _codes(self, codes: dict[str, list[str]]) -> None:
        for username, user_codes in codes.items():
            half = len(user_codes) // 2 or 1
            self.stdout.write(f"  {username:<14} {'  '.join(user_codes[:half])}")
            if user_codes[half:]:
                self.stdout.write(f"  {'':<14} {'  '.join(user_codes[half:])}")
        self.stdout.write(
            f"Each code works once ({demo.BACKUP_CODES} per person). For more, run `python manage.py demo --codes` "
            "in another terminal\n(it prints new ones and the old ones stop working), or, while signed in, use "
            "“New backup codes” on the account page."
        )

    def _banner(self, addr: str, logins: list[tuple[str, str]], codes: dict[str, list[str]]) -> None:
        out = self.stdout.write
        out(self.style.SUCCESS(f"\nOnboarding portal demo at http://{addr}/\n"))
        out(f"Logins (password for all: {demo.DEMO_PASSWORD}):")
        for username, role in logins:
            out(f"  {username:<14} {role}")
        out(
            "\nVendor staff (cs, engineer) also need a second factor. Type one of these single-use backup "
            "codes on the\ntwo-factor page, or set up an authenticator app from the account page:"
        )
        self._codes(codes)
        out("\nSandbox hospitals (use these as the FHIR base URL of a new connection):")
        from connections.sandbox.flavours import FLAVOURS

        for sandbox in demo.SANDBOXES:
            base = f"http://127.0.0.1:{sandbox.port}{FLAVOURS[sandbox.flavour].base_path}"
            auth = sandbox.auth
            if sandbox.client_id:
                auth += f" (client id {sandbox.client_id}, secret {sandbox.client_secret})"
            out(f"  {sandbox.flavour:<14} {base}   auth: {auth}")
        out("\nCtrl-C stops everything.\n")
