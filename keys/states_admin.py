"""The key admin's view of rotation states and stale flags (keys/states.py): two list
filters computed in SQL, and read-only displays for the key page. Nothing here writes."""

from django.contrib import admin
from django.utils.html import format_html, format_html_join
from django.utils.timezone import now

from console.admin_base import badge

from .display import moment
from .states import FlagName, RotationState

STATE_BADGES = {
    RotationState.COMPLIANT: "ok",
    RotationState.DUE_SOON: "warn",
    RotationState.OVERDUE: "failing",
    RotationState.EXPIRED: "failing",
    RotationState.REVOKED: "muted",
}


def state_badge(state):
    state = RotationState(state)
    return badge(STATE_BADGES[state], state.label)


class RotationStateFilter(admin.SimpleListFilter):
    title = "rotation state"
    parameter_name = "rotation"

    def lookups(self, request, model_admin):
        return RotationState.choices

    def queryset(self, request, queryset):
        if self.value() in RotationState.values:
            return queryset.in_rotation_state(self.value(), now())
        return queryset


class StaleFlagFilter(admin.SimpleListFilter):
    title = "stale flag"
    parameter_name = "flag"

    def lookups(self, request, model_admin):
        return FlagName.choices

    def queryset(self, request, queryset):
        if self.value() in FlagName.values:
            return queryset.with_stale_flag(self.value(), now())
        return queryset


class RotationDisplays:
    """Mixin for the key admin: the rotation column and the key page's read-only fields.
    Reads the project and organization loaded with the key (list_select_related)."""

    @admin.display(description="rotation")
    def rotation_badge(self, key):
        return state_badge(key.rotation_state(now()))

    @admin.display(description="rotation state")
    def rotation_state_display(self, key):
        if key._state.adding:
            return "-"
        return state_badge(key.rotation_state(now()))

    @admin.display(description="next rotation due")
    def next_rotation_due_display(self, key):
        if key._state.adding:
            return "-"
        due = key.next_rotation_due()
        return format_html("{} ({}-day policy)", moment(due), key.rotation_policy_days())

    @admin.display(description="stale flags")
    def stale_flags_display(self, key):
        if key._state.adding:
            return "-"
        flags = key.stale_flags(now())
        if not flags:
            return "None"
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li>{} {}{}</li>",
                (
                    (
                        badge("warn", FlagName(f.name).label),
                        f.reason,
                        f" (since {f.since:%Y-%m-%d})" if f.since else "",
                    )
                    for f in flags
                ),
            ),
        )
