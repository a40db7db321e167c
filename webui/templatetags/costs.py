"""`{% endpoint_cost endpoint %}`: an endpoint's estimated cost (docs/cost.md), shown by
the small partial webui/_cost.html wherever an endpoint is."""

from __future__ import annotations

from typing import Any

from django import template

from deployer.models import Endpoint
from deployer.services.costs import endpoint_cost_estimate

register = template.Library()


@register.inclusion_tag("webui/_cost.html")
def endpoint_cost(
    endpoint: Endpoint, costs: dict[int, dict[str, Any]] | None = None, *, detailed: bool = False
) -> dict[str, Any]:
    """``costs``: a list's estimates by endpoint id, priced at once (services.costs.endpoint_costs)."""
    cost = costs.get(endpoint.pk) if costs else None
    return {"cost": cost or endpoint_cost_estimate(endpoint=endpoint).as_dict(), "detailed": detailed}
