"""Every refused request (HTTP 403) is announced, so the audit log can record it.

`DenialMiddleware` sends `permission_denied` for each response with status 403: a
PermissionDenied raised by a view (an admin change, add or delete by someone without the
right, an admin action they may not run), a view's own 403 and a CSRF refusal. The
console knows nothing of the audit log (it is the floor below accounts); the receiver is
accounts/signals.py. Login redirects (anonymous visitors, non-staff users) are not
refusals: they get the login page.
"""

from django.dispatch import Signal

# Sent with `request` and `response` once a 403 response has been made.
permission_denied = Signal()


class DenialMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.status_code == 403:
            permission_denied.send(sender=type(self), request=request, response=response)
        return response
