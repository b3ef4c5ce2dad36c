"""The rotation report's admin page (keys/report.py): filters, totals per state and flag,
the rows a page at a time, and CSV / JSON downloads of every row. For everyone who may
view keys (console admins and security reviewers); read-only. Each view is a
"report.viewed" audit event and each download a "report.exported" one, with the filters
and the row count, never row contents."""

from django import forms
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpResponseNotAllowed, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.utils.timezone import now

from accounts.models import AuditEvent, Environment, Organization
from console.leakguard import refuse_key_shaped

from . import report, report_csv
from .states import FlagName, RotationState
from .states_admin import state_badge

PAGE_SIZE = 200
FILTERS = ("organization", "project", "environment", "state", "flag")
FORMATS = {"csv": "text/csv; charset=utf-8", "json": "application/json"}  # format → content type


class ReportFilterForm(forms.Form):
    organization = forms.ChoiceField(required=False)
    project = forms.CharField(
        required=False, max_length=200, validators=[refuse_key_shaped], help_text="Name or proj_… id"
    )
    environment = forms.ChoiceField(required=False, choices=[("", "All"), *Environment.choices])
    state = forms.ChoiceField(required=False, choices=[("", "All"), *RotationState.choices])
    flag = forms.ChoiceField(required=False, choices=[("", "Any"), *FlagName.choices])
    as_of = forms.CharField(
        required=False,
        max_length=40,
        validators=[refuse_key_shaped],
        label="As of",
        help_text="YYYY-MM-DD (end of day, UTC)",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["organization"].choices = [("", "All"), *Organization.objects.values_list("slug", "name")]

    def clean_as_of(self):
        try:
            as_of = report.parse_as_of(self.cleaned_data["as_of"])
        except report.ReportError as e:
            raise forms.ValidationError(str(e)) from None
        if as_of is not None and as_of > now():
            raise forms.ValidationError("That is in the future: the report shows what was, not what will be.")
        return as_of


def page_number(request):
    try:
        return max(int(request.GET.get("page", 1)), 1)
    except ValueError:
        return 1


def download(request, filters, as_of, fmt):
    """Both formats stream: the CSV as PostgreSQL writes it through COPY (keys/report_csv.py
    csv_stream), the JSON from the server-side cursor (keys/report.py json_stream). The
    audit event, with the row count of the rows' own WHERE (a COUNT for the CSV; for the
    JSON the sum of the totals its document starts with), is committed
    before the first byte, so a client that goes away mid-file is still on record."""
    at = now()
    if fmt == "csv":
        rows, content = report.export_size(filters, at, as_of), report_csv.csv_stream(filters, at, as_of, encoded=True)
    else:
        totals, flag_totals = report.export_totals(filters, at, as_of)
        rows, content = sum(totals.values()), report.json_stream(filters, at, as_of, totals, flag_totals)
    AuditEvent.record(request.user, "report.exported", None, **report.export_details(filters, as_of, rows, fmt))
    response = StreamingHttpResponse(content, content_type=FORMATS[fmt])
    stamp = (as_of or at).strftime("%Y%m%d")
    response["Content-Disposition"] = f'attachment; filename="rotation-report-{stamp}.{fmt}"'
    return response


def rotation_report_view(request, model_admin):
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    form = ReportFilterForm(request.GET or None)
    result = None
    if not request.GET or form.is_valid():
        data = form.cleaned_data if request.GET else {}
        filters = report.Filters(**{name: data.get(name) or "" for name in FILTERS})
        fmt = request.GET.get("format", "")
        if fmt in FORMATS:
            return download(request, filters, data.get("as_of"), fmt)
        result, count = report.build_page(filters, now(), data.get("as_of"), page_number(request), PAGE_SIZE)
        AuditEvent.record(request.user, "report.viewed", None, **report.audit_details(result, rows=count))
    page = Paginator(range(count if result else 0), PAGE_SIZE).get_page(page_number(request))
    query = request.GET.copy()
    query.pop("page", None)
    query.pop("format", None)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Rotation report",
        "opts": model_admin.model._meta,
        "form": form,
        "report": result,
        "page": page,
        "rows": [{**row, "badge": state_badge(row["state"])} for row in (result.rows if result else [])],
        "count": count if result else 0,
        "totals": [(RotationState(s).label, n) for s, n in result.totals.items()] if result else [],
        "flag_totals": [(FlagName(f).label, n) for f, n in result.flag_totals.items()] if result else [],
        "query": query.urlencode(),
    }
    return TemplateResponse(request, "admin/keys/rotation_report.html", context)
