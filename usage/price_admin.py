"""Admin for model prices (console admins edit, audited; reviewers view), the budget
alerts raised (read-only), and two pages that change nothing: "Estimate cost" (the
dry-run estimator, usage/prices.py) and "Reconciliation" (estimated vs billed per
project and month, usage/reconcile.py). Both pages need the view permission on model
prices, which Console admins and Security reviewers have (usage/migrations/0003_…).
Registered from usage/admin.py.
"""

from datetime import UTC
from decimal import Decimal

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.core.validators import MinValueValidator
from django.http import HttpResponseNotAllowed
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.timezone import now as current_time

from accounts.audit import AuditedAdmin, AuditedForm
from accounts.models import Organization
from console.admin_base import ReadOnlyAdmin, badge
from console.leakguard import refuse_key_shaped, refuse_unsafe_text

from . import prices, reconcile
from .models import BudgetAlert, ModelPrice

BADGE_CSS = {"all": ["keys/admin.css"]}
CACHED_TOO_MANY = "Cached input tokens are part of the input tokens: they cannot be more."


class ModelPriceForm(AuditedForm):
    class Meta:
        model = ModelPrice
        fields = ["model", "effective_date", "input_per_1m", "cached_input_per_1m", "output_per_1m", "source"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A reviewer's form has no fields (read-only), hence the `if`.
        for name in ("model", "source"):
            if name in self.fields:
                self.fields[name].validators += [refuse_key_shaped, refuse_unsafe_text]
        for name in ("input_per_1m", "cached_input_per_1m", "output_per_1m"):
            if name in self.fields:
                self.fields[name].validators.append(MinValueValidator(Decimal(0), "A price cannot be negative."))


class EstimateForm(forms.Form):
    model = forms.CharField(
        max_length=200,
        validators=[refuse_key_shaped, refuse_unsafe_text],
        widget=forms.TextInput(attrs={"list": "known-models"}),
    )
    input_tokens = forms.IntegerField(min_value=0, help_text="Per request, cached ones included.")
    cached_input_tokens = forms.IntegerField(
        min_value=0, initial=0, required=False, help_text="Of the input tokens, how many are cached."
    )
    output_tokens = forms.IntegerField(min_value=0, help_text="Per request.")
    requests = forms.IntegerField(min_value=1, initial=1, required=False)
    on = forms.DateField(required=False, help_text="Price on this day (YYYY-MM-DD); default today.")

    def clean(self):
        data = super().clean()
        data["cached_input_tokens"] = data.get("cached_input_tokens") or 0
        data["requests"] = data.get("requests") or 1
        if "input_tokens" in data and data["cached_input_tokens"] > data["input_tokens"]:
            self.add_error("cached_input_tokens", CACHED_TOO_MANY)
        return data


class ReconciliationForm(forms.Form):
    organization = forms.ModelChoiceField(Organization.objects.order_by("name"), required=False, empty_label="All")
    months = forms.TypedChoiceField(choices=[(n, n) for n in (1, 3, 6, 12)], coerce=int, initial=3, required=False)


@admin.register(ModelPrice)
class ModelPriceAdmin(AuditedAdmin):
    form = ModelPriceForm
    list_display = ["model", "effective_date", "input_per_1m", "cached_input_per_1m", "output_per_1m", "source"]
    list_filter = ["effective_date"]
    search_fields = ["model", "source"]
    ordering = ["model", "-effective_date"]
    change_list_template = "usage/modelprice_change_list.html"

    def get_urls(self):
        site = self.admin_site
        return [
            path("estimate/", site.admin_view(self.estimate_view), name="usage_estimate_cost"),
            path("reconciliation/", site.admin_view(self.reconciliation_view), name="usage_reconciliation"),
        ] + super().get_urls()

    def _page(self, request, template, title, **context):
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        context = {**self.admin_site.each_context(request), "title": title, "opts": self.model._meta, **context}
        return TemplateResponse(request, template, context)

    def estimate_view(self, request):
        """GET only: the form, and with its values the estimate. Writes nothing."""
        form = EstimateForm(request.GET if "model" in request.GET else None)
        estimate = error = None
        if form.is_bound and form.is_valid():
            data = form.cleaned_data
            try:
                estimate = prices.breakdown(
                    data["model"],
                    data["input_tokens"],
                    data["output_tokens"],
                    data["cached_input_tokens"],
                    data["requests"],
                    data["on"],
                )
            except ValueError as e:  # UnknownModel: its message names the model, nothing else
                error = str(e)
        return self._page(
            request,
            "usage/estimate_cost.html",
            "Estimate cost",
            form=form,
            estimate=estimate,
            error=error,
            known_models=prices.PriceBook.load().models(),
        )

    def reconciliation_view(self, request):
        """GET only: estimated vs billed per project and month. Writes nothing."""
        form = ReconciliationForm(request.GET or None)
        organization, months = None, 3
        if form.is_bound and form.is_valid():
            organization = form.cleaned_data["organization"]
            months = form.cleaned_data["months"] or 3
        rows = reconcile.reconcile(current_time().astimezone(UTC), months=months, organization=organization)
        return self._page(
            request, "usage/reconciliation.html", "Reconciliation: estimated vs billed", form=form, rows=rows
        )


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin):
    """Alerts raised by usage/alerts.py, with their delivery as recorded on the outbox."""

    list_display = [
        "created",
        "scope",
        "kind",
        "threshold",
        "month",
        "spend_usd",
        "budget_usd",
        "estimated",
        "delivery",
        "delivery_error",
    ]
    list_select_related = ["organization", "project__organization", "notification"]
    list_filter = ["kind", "month", "organization"]
    search_fields = ["organization__name", "project__name"]
    ordering = ["-created"]

    class Media:
        css = BADGE_CSS

    @admin.display(description="scope")
    def scope(self, alert):
        return str(alert.project or alert.organization)

    @admin.display(description="delivery")
    def delivery(self, alert):
        n = alert.notification
        if n is None:
            return badge("muted", "—")
        if n.gave_up_at:
            return badge("failing", f"Gave up after {n.attempts}")
        if n.next_attempt_at is None:
            return badge("ok", "Delivered")
        return badge("warn", f"Pending ({n.attempts} attempt{'s' if n.attempts != 1 else ''})")

    @admin.display(description="last delivery error")
    def delivery_error(self, alert):
        """Scrubbed by the outbox: the channel, host and status, never a URL's path or query."""
        return (alert.notification.last_error if alert.notification else "") or "—"
