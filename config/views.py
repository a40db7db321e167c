import ipaddress

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from deployer.health import system_readiness

# Set by a reverse proxy: a request carrying one came from elsewhere, even when the proxy
# itself connects from loopback.
_PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_REAL_IP", "HTTP_FORWARDED")


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: this process answers. No database, Redis or Celery (what a load balancer asks)."""
    return JsonResponse({"ok": True})


@require_GET
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: database, broker, worker and container engine; 503 when one is not ready.
    Hostnames and error text only for staff and for callers on this machine."""
    report = system_readiness(detail=_trusted(request))
    return JsonResponse(report, status=200 if report["ok"] else 503)


def _trusted(request: HttpRequest) -> bool:
    if request.user.is_staff:
        return True
    if any(header in request.META for header in _PROXY_HEADERS):
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False
