"""The container engine: the one package that runs the engine's CLI (podman, or docker
against a Docker Engine). Every piece of model code runs in a container started here
(docs/containers.md):

- ``cli``: which engine, its environment, short commands, labels, removal;
- ``images``: image builds and pushes (detached jobs) and image lookups;
- ``sandbox``: one-shot locked-down containers whose output comes back through the engine
  (inspection);
- ``runtimes``: long-running serving containers of local endpoints.
"""
