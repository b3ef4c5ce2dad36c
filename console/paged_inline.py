"""Inline rows a page at a time, for parents with hundreds of children.

An organization has hundreds of projects and a project a hundred keys or more: rendering
every child as an inline row (each with its widgets, or its read-only cells) made their
pages take 0.7–1.1 s at 50,000 keys (docs/PERFORMANCE.md). A paged inline renders
`per_page` rows, ordered by `paged_ordering`, and a pager under them
(`?<prefix>_page=N`, the other query parameters kept). Saving posts to the same URL, so the
formset a POST is checked against holds exactly the rows that page showed: a row edited
on page 2 is saved as it would be on an unpaged page. The page costs two queries whatever
the number of children (the count, and the page's rows through a LIMIT subquery).
"""

from django.db.models import Subquery
from django.utils.http import urlencode

PAGE_TEMPLATE = "admin/edit_inline/paged_tabular.html"


def page_number(request, param):
    try:
        return max(int(request.GET.get(param, 1)), 1)
    except (TypeError, ValueError):
        return 1


class Pager:
    """What the template shows under the rows: which rows, of how many, and the links."""

    def __init__(self, request, param, number, per_page, total):
        self.param, self.per_page, self.total = param, per_page, total
        self.pages = max((total + per_page - 1) // per_page, 1)
        self.number = min(number, self.pages)
        self.first = (self.number - 1) * per_page + 1 if total else 0
        self.last = min(self.number * per_page, total)
        self._query = {k: v for k, v in request.GET.items() if k != param}

    @property
    def start(self):
        return (self.number - 1) * self.per_page

    def url(self, number):
        return "?" + urlencode({**self._query, self.param: number})

    @property
    def previous_url(self):
        return self.url(self.number - 1) if self.number > 1 else ""

    @property
    def next_url(self):
        return self.url(self.number + 1) if self.number < self.pages else ""


class PagedInline:
    """Mixin for a TabularInline: its existing rows a page at a time."""

    per_page = 25
    paged_ordering = ("pk",)
    template = PAGE_TEMPLATE

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        inline = self

        class PagedFormSet(formset):
            def __init__(self, *args, **kw):
                super().__init__(*args, **kw)
                param = f"{self.prefix}_page"
                rows = self.queryset.order_by(*inline.paged_ordering)
                self.pager = Pager(
                    request, param, page_number(request, param), inline.per_page, rows.order_by().count()
                )
                ids = rows.values("pk")[self.pager.start : self.pager.start + inline.per_page]
                self.queryset = rows.filter(pk__in=Subquery(ids))

        return PagedFormSet
