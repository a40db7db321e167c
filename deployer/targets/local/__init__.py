"""The ``local`` target: each rollout of an endpoint is a container on this machine.

Each rollout gets its own directory, DATA_DIR/endpoints/<name>/<deployment id>/ (the
model directory in ``model/``, the runtime's socket in ``socket-<start>/``), and its own
container of the model's serving image (``deployer.serving_images``, built if the
engine lacks it; ``deployer.integrations.containers.runtimes`` runs it), started as
SageMaker starts it (``serve``, the model read-only at /opt/ml/model) with no network, so
the model's code reaches nothing on this machine or beyond. The gateway reaches the
runtime only through the socket, once the socket directory has been taken back from the
container and the socket checked (``runtimes.lock_socket``).

Blue/green: the new container starts beside the old one, must answer ``/ping`` and a
test invocation of the inspection's example payload, then ``switch_traffic`` points
``Endpoint.runtime`` at its socket and ``stop_previous`` removes the old container once
every web process has seen the switch (the gateway caches routes for
``ROUTE_CACHE_SECONDS``). Requests travel over keep-alive connections pooled per socket
(``deployer.integrations.containers.runtime_http``).

The modules: ``target`` (``LocalTarget``: options, ``STEPS``, invoke), ``supervision``
(the reconciler's restarts with backoff, and reaping), ``runtime`` (starting a container,
locking its socket, ``/ping``), ``image`` (the rollout's serving image), ``logs`` (the
runtime's output into LogLine) and ``paths``.
"""

from deployer.targets.local.target import LocalTarget

__all__ = ["LocalTarget"]
