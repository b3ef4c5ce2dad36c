"""`manage.py scan_leaks PATH…`: find OpenAI and Azure OpenAI secrets in files (and with
--git-history in every blob of their git repositories), say which registered keys they
are, and flag those as leaked. Prints locations, hints and owners; never a secret.

Exit code 1 when a registered key was found, 0 otherwise, 2 for a usage error (as
argparse). The scanning is keys/leakscan.py's."""

import json
import os

from django.core.management.base import CommandError

from console.leakguard import GuardedCommand
from keys import leakscan

ACTOR = "cli:scan_leaks"


class Command(GuardedCommand):
    help = (
        "Scan files and directories (and with --git-history every blob reachable from any ref of "
        "their git repositories) for OpenAI and Azure OpenAI keys. Reports file:line, the key's hint "
        "and, for a registered key, its organization, project and owner, and flags it as leaked. "
        "Exit code 1 when a registered key leaked."
    )

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", metavar="PATH", help="Files or directories to scan.")
        parser.add_argument(
            "--git-history",
            action="store_true",
            help="Also scan every blob reachable from any ref of each git repository found.",
        )
        parser.add_argument("--format", choices=["table", "json"], default="table")

    def handle(self, *args, paths, git_history, format, **options):
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise CommandError(f"No such file or directory: {', '.join(missing)}", returncode=2)
        findings, stats = leakscan.scan(paths, git_history=git_history)
        registered = leakscan.registered_keys(findings)
        flagged = leakscan.flag_leaked(findings, registered, actor=ACTOR)
        rows = [self.row(f, registered.get(f.fingerprint), flagged) for f in findings]
        for path, reason in stats.errors:
            self.stderr.write(f"Not scanned: {path}: {reason}")
        if format == "json":
            self.write_json(rows, stats)
        else:
            self.write_table(rows, stats)
        leaked = {row["key"]["id"] for row in rows if row["key"]}
        if leaked:
            raise CommandError(
                f"{len(leaked)} registered key{'s' if len(leaked) != 1 else ''} leaked: rotate "
                f"{'them' if len(leaked) != 1 else 'it'} now.",
                returncode=1,
            )

    @staticmethod
    def row(finding, match, flagged):
        key = match.key if match else None
        return {
            "path": finding.path,
            "line": finding.line,
            "source": finding.source,
            "commit": finding.commit,
            "blob": finding.blob,
            "kind": finding.kind,
            "hint": finding.hint,
            "registered": key is not None,
            "key": None
            if key is None
            else {
                "id": str(key.pk),
                "name": key.name,
                "organization": key.organization.slug,
                "project": key.project.name if key.project_id else None,
                "owner": key.owner,
                "secret": match.secret,
                "revoked": key.revoked_at is not None,
                "leaked_at": key.leaked_at.isoformat() if key.leaked_at else None,
                "newly_flagged": key.pk in flagged,
            },
        }

    @staticmethod
    def summary(rows, stats):
        return {
            "files": stats.files,
            "git_blobs": stats.blobs,
            "git_repositories": stats.repositories,
            "bytes": stats.bytes,
            "skipped_binary": stats.skipped_binary,
            "findings": len(rows),
            "registered_keys": len({r["key"]["id"] for r in rows if r["key"]}),
            "newly_flagged": len({r["key"]["id"] for r in rows if r["key"] and r["key"]["newly_flagged"]}),
            "not_scanned": [{"path": path, "reason": reason} for path, reason in stats.errors],
        }

    def write_json(self, rows, stats):
        self.stdout.write(json.dumps({"findings": rows, "summary": self.summary(rows, stats)}, indent=2))

    def write_table(self, rows, stats):
        summary = self.summary(rows, stats)
        if rows:
            table = [("LOCATION", "KIND", "HINT", "ORGANIZATION", "PROJECT", "KEY", "OWNER", "")]
            for r in rows:
                key = r["key"] or {}
                where = f"{r['path']}:{r['line']}"
                if r["source"] == leakscan.GIT_HISTORY:
                    where += f" (history{', commit ' + r['commit'] if r['commit'] else ''})"
                status = ""
                if key:
                    status = "flagged leaked" if key["newly_flagged"] else "already flagged"
                    if key["secret"] == leakscan.SUPERSEDED:
                        status += " (superseded secret)"
                table.append(
                    (
                        where,
                        r["kind"],
                        r["hint"],
                        key.get("organization") or "-",
                        key.get("project") or "-",
                        key.get("name") or "(not registered)",
                        key.get("owner") or "-",
                        status,
                    )
                )
            widths = [max(len(str(line[i])) for line in table) for i in range(len(table[0]))]
            for line in table:
                self.stdout.write("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
        megabytes = summary["bytes"] / 1_000_000
        scanned = f"Scanned {summary['files']} file{'s' if summary['files'] != 1 else ''} ({megabytes:.1f} MB)"
        if summary["git_repositories"]:
            repositories = summary["git_repositories"]
            scanned += (
                f" and {summary['git_blobs']} blobs from the history of {repositories} git "
                f"repositor{'ies' if repositories != 1 else 'y'}"
            )
        self.stdout.write(
            f"{scanned}; skipped {summary['skipped_binary']} binary. "
            f"{summary['findings']} secret{'s' if summary['findings'] != 1 else ''} found, "
            f"{summary['registered_keys']} registered key{'s' if summary['registered_keys'] != 1 else ''} "
            f"({summary['newly_flagged']} newly flagged leaked)."
        )
