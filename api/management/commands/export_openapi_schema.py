"""manage.py export_openapi_schema [--output FILE]: the REST API's OpenAPI document, as
served at /api/v1/openapi.json (for generating clients in CI without a running server).

It shadows django-ninja's command of the same name (the api app comes first in
INSTALLED_APPS), so every management command of the project stays a GuardedCommand."""

import json
from pathlib import Path

from django.core.serializers.json import DjangoJSONEncoder

from api.endpoints import api
from console.leakguard import GuardedCommand


class Command(GuardedCommand):
    help = "Print (or write to --output) the REST API's OpenAPI document, as served at /api/v1/openapi.json."

    def add_arguments(self, parser):
        parser.add_argument("--output", help="Write the document to this file instead of stdout.")
        parser.add_argument("--indent", type=int, default=None, help="Indent the JSON by this many spaces.")

    def handle(self, *args, output=None, indent=None, **options):
        document = json.dumps(
            api.get_openapi_schema(path_prefix="/api/v1/"), cls=DjangoJSONEncoder, indent=indent, sort_keys=True
        )
        if output:
            Path(output).write_text(document + "\n")
            self.stdout.write(f"Wrote the OpenAPI document to {output}.")
        else:
            self.stdout.write(document)
