"""Error bodies as OpenAI and Azure OpenAI send them.

OpenAI: `{"error": {"message", "type", "param", "code"}}` (param and code may be null),
the messages copied from the real API. Azure: `{"error": {"code": "<status>", "message"}}`.
A message never contains a presented key in full: the 401 echoes it masked, as OpenAI does.

The redaction helpers live here too, written for the sandbox alone: a stand-in that shared
the console's key-format code could hide the console's bugs, so the sandbox's server
modules import nothing from the console (tests/test_sandbox_isolation.py).
"""

RATE_LIMITS_URL = "https://platform.openai.com/account/rate-limits"
API_KEYS_URL = "https://platform.openai.com/account/api-keys"
ERROR_CODES_URL = "https://platform.openai.com/docs/guides/error-codes/api-errors"


def mask_key(presented):
    """The key as OpenAI echoes it: its first 8 and last 4 characters around asterisks
    (`sk-proj-****…abcd`). A value too short to hide anything is masked completely."""
    if len(presented) <= 16:
        return "*" * len(presented)
    return presented[:8] + "*" * (len(presented) - 12) + presented[-4:]


# The prefixes OpenAI's keys carry, longest first; anything else (an Azure key) has none.
KEY_PREFIXES = ("sk-svcacct-", "sk-admin-", "sk-proj-", "sk-")


def key_hint(presented):
    """How the sandbox names a key in its control answers and stats: its prefix and last
    four characters (`sk-proj-…abcd`, `…9f3e` for an Azure key), as the dashboard lists
    keys. Four characters identify a key among a test's few; they reveal nothing usable."""
    prefix = next((p for p in KEY_PREFIXES if presented.startswith(p)), "")
    return f"{prefix}…{presented[-4:]}"


def openai_error(message, type_, code=None, param=None):
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def missing_key():
    return openai_error(
        "You didn't provide an API key. You need to provide your API key in an Authorization header "
        "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank "
        "username) if you're accessing the API from your browser and are prompted for a username and "
        f"password. You can obtain an API key from {API_KEYS_URL}.",
        "invalid_request_error",
    )


def invalid_api_key(presented):
    return openai_error(
        f"Incorrect API key provided: {mask_key(presented)}. You can find your API key at {API_KEYS_URL}.",
        "invalid_request_error",
        "invalid_api_key",
    )


def no_organization():
    return openai_error(
        "You must be a member of an organization to use the API. Please contact us through our help "
        "center at help.openai.com.",
        "invalid_request_error",
        "no_organization",
    )


def unsupported_country():
    return openai_error(
        "Country, region, or territory not supported", "request_forbidden", "unsupported_country_region_territory"
    )


def admin_key_on_api_endpoint():
    # What the console needs to know is only that it is refused; the exact wording upstream
    # is unconfirmed (the platform docs say admin keys cannot call non-administration endpoints).
    return openai_error(
        "Admin API keys cannot be used for non-administration endpoints. Use a project API key.",
        "invalid_request_error",
    )


def missing_admin_scope():
    return openai_error(
        "You have insufficient permissions for this operation. Missing scopes: api.management.read. "
        "Administration endpoints need an admin API key.",
        "invalid_request_error",
    )


def invalid_url(method, path):
    return openai_error(f"Invalid URL ({method} {path})", "invalid_request_error")


def invalid_parameter(message, param=None):
    """400 for a query parameter the API refuses (usage and costs: start_time, limit, …)."""
    return openai_error(message, "invalid_request_error", "invalid_parameter" if param else None, param)


def model_not_found(model):
    return openai_error(
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    )


def rate_limit_exceeded(organization, limit, used, retry_after):
    return openai_error(
        f"Rate limit reached for requests in organization {organization} on requests per min (RPM): "
        f"Limit {limit}, Used {used}, Requested 1. Please try again in {retry_after}s. "
        f"Visit {RATE_LIMITS_URL} to learn more.",
        "requests",
        "rate_limit_exceeded",
    )


def insufficient_quota(type_only=False):
    """OpenAI has sent this with the code set, and with `insufficient_quota` only in the
    type and a null code: `type_only` gives the second shape."""
    return openai_error(
        "You exceeded your current quota, please check your plan and billing details. For more "
        f"information on this error, read the docs: {ERROR_CODES_URL}.",
        "insufficient_quota",
        None if type_only else "insufficient_quota",
    )


def server_error():
    return openai_error("The server had an error while processing your request. Sorry about that!", "server_error")


def bad_gateway():
    # The real 502 comes from Cloudflare with `"code": 502` (an integer); the sandbox sends
    # null so the body stays valid against the published ErrorResponse schema.
    return openai_error("Bad gateway.", "cf_bad_gateway")


def overloaded():
    return openai_error("The engine is currently overloaded, please try again later.", "server_error")


AZURE_MESSAGES = {
    400: "Resource not found",
    401: (
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
        "valid key for an active subscription and use a correct regional API endpoint for your resource."
    ),
    403: "Access denied due to Virtual Network/Firewall rules.",
    404: "Resource not found",
    429: "Requests to the Models_List Operation under Azure OpenAI API have exceeded call rate limit.",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The service is temporarily unable to process your request. Please try again later.",
}


def azure_error(status, message=None):
    """Azure's error body: the status as a string code and a message, no type or param."""
    return {"error": {"code": str(status), "message": message or AZURE_MESSAGES.get(status, "Error")}}
