"""What running model code only in containers costs, measured in one run (issue 10).

    .venv/bin/python benchmarks/containers_bench.py [--seconds 6] [--rounds 3] [--skip-pipeline]

Prints:
1. the serving image of the example model (randomForest on iris): its size, and how long the
   real recipe (deployer/build_context.py) takes to build cold (no layer cache) and cached;
2. a container's cold start, `podman run ... serve` to the first /ping 200, as SageMaker
   starts it (model data at /opt/ml/model) and as a local endpoint starts (no network,
   read-only, Unix socket);
3. the runtime's req/s and p50/p99 on 1 and 4 keep-alive connections (wrk, one-row CSV) in a
   container against the same `serve` of the same image as a bare process: the image's root
   file system mounted and entered with chroot on the host's network, no namespaces, no
   cgroup limits. Goal: the container >= 90% of the bare process, >= 1,000 req/s;
4. unless --skip-pipeline: inspection time and upload-to-live of the example model through a
   throwaway installation (benchmarks/pipeline_bench.py --deploy-only).

Runs as root (podman, mount, chroot). Sends traffic to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runtime_bench import ROW_CSV, exited, load_average, median_run, serve_on_a_free_port, stop, wait_for_ping
from wrk import post_script, run_wrk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository root, for Django's apps
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DJANGO_DEBUG", "1")
# Its containers are labelled apart from any installation's on this machine.
os.environ.setdefault("RDEPLOY_INSTALLATION_ID", "containersbench")
os.environ.setdefault("RDEPLOY_DATA_DIR", tempfile.mkdtemp(prefix="rdeploy-containers-bench-data-"))

TRAIN_R = """
suppressMessages(library(randomForest))
set.seed(1)
out <- commandArgs(trailingOnly = TRUE)[1]
dir.create(out, showWarnings = FALSE)
saveRDS(randomForest(Species ~ ., data = iris, ntree = 200), file.path(out, "model.rds"))
"""
NAME_PREFIX = "rdeploy-bench"


def engine(*arguments: str, check: bool = True, timeout: float = 1800) -> str:
    from deployer.integrations.containers import cli

    result = cli.run(list(arguments), timeout=timeout)
    if check and result.returncode != 0:
        raise SystemExit(f"podman {' '.join(arguments[:3])} failed: {cli.output_of(result)}")
    return result.stdout.decode().strip()


def serving_image() -> tuple[str, dict[str, float]]:
    """Builds the example model's serving image with the real recipe (deployer/serving_images.py):
    cold (no layer cache, on the cached base image), again with the engine's layer cache, and
    reused by its content-hash tag (no build). Returns (image, seconds of each)."""
    from deployer.integrations.containers import images
    from deployer.services.images import serving_image_ensure
    from deployer.serving_images import local_image, serving_image_context

    context = serving_image_context(packages=["randomForest"])
    image = local_image(context)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    images.build(context=context, tags=[image], timeout=900, no_cache=True)
    seconds["cold"] = time.perf_counter() - started
    started = time.perf_counter()
    images.build(context=context, tags=[image], timeout=900)
    seconds["layer cache"] = time.perf_counter() - started
    started = time.perf_counter()
    serving_image_ensure(packages=["randomForest"])
    seconds["same tag"] = time.perf_counter() - started
    return image, seconds


def cold_start_as_sagemaker(image: str, model_dir: Path) -> float:
    """Seconds from `run IMAGE serve` (port 8080 published) to the first /ping 200."""
    name = f"{NAME_PREFIX}-cold-{os.getpid()}"
    started = time.perf_counter()
    try:
        # No host port given: the engine binds one it finds free and `port` says which.
        engine(
            "run",
            "--detach",
            "--name",
            name,
            "--publish",
            "127.0.0.1::8080",
            "--volume",
            f"{model_dir}:/opt/ml/model:ro",
            image,
            "serve",
            timeout=60,
        )
        published = engine("port", name, "8080/tcp").split()[0]
        wait_for_ping(int(published.rsplit(":", 1)[1]), timeout=60)
        return time.perf_counter() - started
    finally:
        engine("rm", "--force", name, check=False)


def cold_start_as_local_endpoint(image: str, model_dir: Path, work: Path) -> float:
    """Seconds from starting a local endpoint's container (deployer/integrations/containers/
    runtimes.py: no network, read-only, own uid, limits) to the first /ping 200 through its
    locked Unix socket, as the gateway reaches it."""
    from deployer.integrations.containers import runtimes
    from testsupport.runtimes import locked_socket_answering

    name = f"{NAME_PREFIX}-local-{os.getpid()}"
    socket_dir = work / "socket"
    started = time.perf_counter()
    try:
        runtimes.start(
            name=name,
            image=image,
            command=["serve"],
            endpoint="bench",
            deployment=0,
            model_dir=model_dir,
            socket_dir=socket_dir,
            env={"RDEPLOY_MAX_WORKERS": "2"},
            memory_mb=1024,
            cpus=2.0,
        )
        locked_socket_answering(name, socket_dir, timeout=60)
        return time.perf_counter() - started
    finally:
        runtimes.stop(name, grace=1)


def start_container(image: str, model_dir: Path, port: int) -> str:
    """`serve` in a container on the host's network, as the bare process is, on ``port``."""
    name = f"{NAME_PREFIX}-serve-{os.getpid()}"
    remove_container(name)
    engine(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "--volume",
        f"{model_dir}:/opt/ml/model:ro",
        "--env",
        f"SAGEMAKER_BIND_TO_PORT={port}",
        "--env",
        "RDEPLOY_BIND=127.0.0.1",
        image,
        "serve",
    )
    return name


def remove_container(name: str) -> None:
    engine("rm", "--force", name, check=False)


def container_exited(name: str) -> bool:
    return engine("container", "inspect", "--format", "{{.State.Running}}", name) != "true"


def start_bare(root: str, model_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """The image's own `serve`, R and packages as a host process: chroot into the image
    mounted at ``root``."""
    # The paths are inside the mounted image, in a mount namespace of their own.
    script = (
        f"mount --bind /proc {root}/proc && mount --rbind /dev {root}/dev && mount -t tmpfs tmpfs {root}/tmp "  # noqa: S108
        f"&& mount -t tmpfs tmpfs {root}/mnt && mkdir -p {root}/mnt/model && mount --bind {model_dir} {root}/mnt/model "
        f"&& exec chroot {root} env RDEPLOY_MODEL_DIR=/mnt/model SAGEMAKER_BIND_TO_PORT={port} RDEPLOY_BIND=127.0.0.1 "
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin serve"
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process


def pipeline_figures() -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "pipeline_bench.py"), "--deploy-only"],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(result.stdout[result.stdout.index("{") :]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=6, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved wrk runs per server (median)")
    parser.add_argument("--skip-pipeline", action="store_true", help="skip inspection and upload-to-live")
    args = parser.parse_args()
    import django

    django.setup()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="rdeploy-containers-bench-") as tmp:
        work = Path(tmp)
        model_dir = work / "model"
        (work / "train.R").write_text(TRAIN_R)
        subprocess.run(["Rscript", str(work / "train.R"), str(model_dir)], check=True)
        # The containers' unprivileged uid reads the model through the bind mount.
        os.chmod(work, 0o755)  # noqa: S103
        (work / "row.csv").write_text(ROW_CSV)
        lua = post_script(work / "post.lua", work / "row.csv", {"Content-Type": "text/csv"})

        image, builds = serving_image()
        size_mb = int(engine("image", "inspect", "--format", "{{.Size}}", image)) / 1e6
        starts_sagemaker = [cold_start_as_sagemaker(image, model_dir) for _ in range(3)]
        starts_local = [cold_start_as_local_endpoint(image, model_dir, work) for _ in range(3)]

        root = engine("image", "mount", image)
        runs: dict[str, list[dict[str, Any]]] = {}
        try:
            container, container_port = serve_on_a_free_port(
                lambda port: start_container(image, model_dir, port), container_exited, remove_container
            )
            try:
                bare, bare_port = serve_on_a_free_port(
                    lambda port: start_bare(root, model_dir, port, work / "bare.log"), exited, stop
                )
                try:
                    for port in (container_port, bare_port):
                        run_wrk(f"http://127.0.0.1:{port}/invocations", lua, 1, 2)  # warm up: fork, compile, page in
                    for _ in range(args.rounds):
                        for name, port in (("container", container_port), ("bare", bare_port)):
                            for connections in (1, 4):
                                runs.setdefault(f"{name} c{connections}", []).append(
                                    run_wrk(f"http://127.0.0.1:{port}/invocations", lua, connections, args.seconds)
                                )
                finally:
                    stop(bare)
            finally:
                remove_container(container)
        finally:
            engine("image", "unmount", image, check=False)
    results = {name: median_run(r) for name, r in runs.items()}
    pipeline = {} if args.skip_pipeline else pipeline_figures()

    print(f"serving image {image}: {size_mb:.0f} MB")
    print("build: " + ", ".join(f"{kind} {seconds:.2f} s" for kind, seconds in builds.items()))
    print(
        f"cold start to first /ping 200: as SageMaker runs it {statistics.median(starts_sagemaker):.2f} s, "
        f"as a local endpoint (no network, through its socket) {statistics.median(starts_local):.2f} s (median of 3)"
    )
    print(f"\n{'server':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, r in results.items():
        flag = "  (errors!)" if r["errors"] else ""
        print(f"{name:<16}{r['rps']:>10.0f}{r['p50']:>10.2f}{r['p99']:>10.2f}{flag}")
    print(f"wrk: median of {args.rounds} interleaved runs of {args.seconds} s; load {load_before} -> {load_average()}")
    one, bare_one = results["container c1"], results["bare c1"]
    four, bare_four = results["container c4"], results["bare c4"]
    goals = [
        ("container/bare, 1 connection >= 0.90", one["rps"] / bare_one["rps"], one["rps"] / bare_one["rps"] >= 0.9),
        (
            "container/bare, 4 connections >= 0.90",
            four["rps"] / bare_four["rps"],
            four["rps"] / bare_four["rps"] >= 0.9,
        ),
        ("container, 1 connection >= 1,000 req/s", one["rps"], one["rps"] >= 1000),
    ]
    if pipeline:
        inspection, live = pipeline["upload_and_inspection_s"], pipeline["upload_to_live_s"]
        goals += [
            ("upload + inspection <= 1.5 s", inspection, inspection <= 1.5),
            ("upload-to-live <= 4 s", live, live <= 4),
        ]
    print("\ngoal                                        value   met")
    for label, value, met in goals:
        print(f"{label:<42}{value:>8.2f}   {'yes' if met else 'NO'}")


if __name__ == "__main__":
    main()
