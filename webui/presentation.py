"""What the pages show, computed from rows: inspection summaries, durations, code snippets,
the invocation chart and the shadow panel."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from deployer.models import DeploymentStep, Endpoint, ModelVersion
from deployer.services.shadow_comparison import ShadowComparison


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


@dataclass
class SchemaColumn:
    name: str
    type: str
    levels: str


@dataclass
class InspectionSummary:
    model_class: str = ""
    r_version: str = ""
    packages: list[str] = field(default_factory=list)
    prediction_kind: str = ""
    columns: list[SchemaColumn] = field(default_factory=list)
    example_payload: str = ""
    example_content_type: str = "text/csv"
    predictions: str = ""
    seconds: float | None = None
    warnings: list[str] = field(default_factory=list)
    r_output: str = ""


def _example_payload(example: Any) -> tuple[str, str]:
    """(payload text, content type) for the inspection's example, as the test form sends it."""
    if isinstance(example, dict) and ("body" in example or "payload" in example):
        body = example.get("body", example.get("payload"))
        content_type = str(example.get("content_type", "text/csv"))
        return (body if isinstance(body, str) else json.dumps(body, indent=1)), content_type
    if isinstance(example, str):
        content_type = "application/json" if example.lstrip()[:1] in ("[", "{") else "text/csv"
        return example, content_type
    if example:
        return json.dumps(example, indent=1), "application/json"
    return "", "text/csv"


def _package_names(packages: Any) -> list[str]:
    """Inspection records {"required": [{"name", "version"}], ...}; older shapes are lists."""
    if isinstance(packages, dict):
        packages = packages.get("required", [])
    names = []
    for package in packages or []:
        if isinstance(package, dict):
            version = package.get("version")
            names.append(f"{package.get('name')} {version}" if version else str(package.get("name")))
        else:
            names.append(str(package))
    return names


def inspection_summary(model_version: ModelVersion) -> InspectionSummary:
    """Reads the record model inspection writes (deployer/r/inspect.R via
    deployer/services/model_inspection.py)."""
    data: dict[str, Any] = model_version.inspection or {}
    schema = data.get("schema") or {}
    raw_columns = schema.get("columns", []) if isinstance(schema, dict) else schema
    columns = [
        SchemaColumn(
            name=str(column.get("name", "")),
            type=str(column.get("type", "")),
            levels=_text(column.get("levels")),
        )
        for column in raw_columns or []
        if isinstance(column, dict)
    ]
    r_version = data.get("r_version")
    if isinstance(r_version, dict):
        writer, reader = r_version.get("writer"), r_version.get("reader")
        r_version = f"written by {writer}, read by {reader}" if writer and reader else (writer or reader)
    example = data.get("example") or {}
    payload, content_type = _example_payload(example)
    predictions = example.get("predictions") if isinstance(example, dict) else None
    prediction = data.get("prediction")
    kind = prediction.get("kind") if isinstance(prediction, dict) else prediction
    timings = data.get("timings")
    total = timings.get("total") if isinstance(timings, dict) else None
    return InspectionSummary(
        model_class=_text(data.get("class")),
        r_version=_text(r_version),
        packages=_package_names(data.get("packages")) or [str(p) for p in model_version.requested_packages],
        prediction_kind=_text(kind),
        columns=columns,
        example_payload=payload,
        example_content_type=content_type,
        predictions=predictions if isinstance(predictions, str) else (json.dumps(predictions) if predictions else ""),
        seconds=float(total) if isinstance(total, int | float) else None,
        warnings=[str(warning) for warning in data.get("warnings") or []],
        r_output=str(data.get("stderr_tail") or ""),
    )


def step_duration(step: DeploymentStep, now: datetime) -> timedelta | None:
    if step.started_at is None:
        return None
    return (step.finished_at or now) - step.started_at


def format_duration(duration: timedelta | None) -> str:
    if duration is None:
        return ""
    seconds = duration.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s"


@dataclass
class Snippet:
    label: str
    slug: str
    code: str


def invoke_snippets(endpoint: Endpoint, *, payload: str, content_type: str) -> list[Snippet]:
    """Copy-paste examples for the endpoint's URLs, with the example payload as body."""
    invoke_url = endpoint.invoke_url or "<invoke URL, shown once the endpoint is live>"
    body = payload or "x\n1"
    snippets = [
        Snippet(
            "curl",
            "curl",
            f"curl -sS -X POST '{invoke_url}' \\\n"
            f'  -H "Authorization: Token $RDEPLOY_TOKEN" \\\n'
            f"  -H 'Content-Type: {content_type}' \\\n"
            f"  --data-binary {_shell_quote(body)}",
        ),
        Snippet(
            "R (rdeploy package)",
            "r-package",
            "library(rdeploy)  # clients/r/rdeploy\n"
            f'rdeploy_connect({_r_string(invoke_url.split("/api/v1/", 1)[0])}, Sys.getenv("RDEPLOY_TOKEN"))\n'
            f"newdata <- {_r_newdata(body, content_type)}\n"
            f"predict(rdeploy_endpoint({_r_string(endpoint.name)}), newdata)",
        ),
        Snippet(
            "R (httr2)",
            "r",
            "library(httr2)\n"
            f'resp <- request("{invoke_url}") |>\n'
            '  req_headers(Authorization = paste("Token", Sys.getenv("RDEPLOY_TOKEN"))) |>\n'
            f"  req_body_raw({_r_string(body)}, type = {_r_string(content_type)}) |>\n"
            "  req_perform()\n"
            "resp_body_string(resp)",
        ),
        Snippet(
            "Python (requests)",
            "python",
            "import os\n\nimport requests\n\n"
            "response = requests.post(\n"
            f"    {invoke_url!r},\n"
            "    headers={\n"
            '        "Authorization": f"Token {os.environ[\'RDEPLOY_TOKEN\']}",\n'
            f'        "Content-Type": {content_type!r},\n'
            "    },\n"
            f"    data={body!r},\n"
            "    timeout=60,\n"
            ")\n"
            "print(response.status_code, response.text)",
        ),
    ]
    if endpoint.public and endpoint.public_url:
        snippets.insert(
            1,
            Snippet(
                "curl (public API key)",
                "curl-public",
                f"curl -sS -X POST '{endpoint.public_url}' \\\n"
                '  -H "x-api-key: $RDEPLOY_API_KEY" \\\n'
                f"  -H 'Content-Type: {content_type}' \\\n"
                f"  --data-binary {_shell_quote(body)}",
            ),
        )
    if endpoint.target == Endpoint.Target.SAGEMAKER:
        sagemaker_name = str((endpoint.runtime or {}).get("endpoint_name", endpoint.name))
        region = str((endpoint.runtime or {}).get("region", "us-east-1"))
        snippets.append(
            Snippet(
                "Python (boto3 sagemaker-runtime)",
                "boto3",
                "import boto3\n\n"
                f'runtime = boto3.client("sagemaker-runtime", region_name={region!r})\n'
                "response = runtime.invoke_endpoint(\n"
                f"    EndpointName={sagemaker_name!r},\n"
                f"    ContentType={content_type!r},\n"
                f"    Body={body!r},\n"
                ")\n"
                'print(response["Body"].read().decode())',
            )
        )
    return snippets


def _r_newdata(body: str, content_type: str) -> str:
    """The example payload as the data frame predict() takes."""
    if "json" in content_type:
        return f"jsonlite::fromJSON({_r_string(body)})"
    return f"utils::read.csv(text = {_r_string(body)})"


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _r_string(text: str) -> str:
    return json.dumps(text)


# The runtime's HAProxy access log line (container_templates/runtime/haproxy.cfg,
# log-format "%tr %HM %HP %ST %Ta ms (queued %Tw ms)"), copied into LogLine by the
# target's collect_logs: "25/Nov/2026:15:29:22.119 POST /invocations 200 3 ms (queued 0 ms)".
_ACCESS_LINE = re.compile(r"\b(?:POST|GET) \S*/invocations\S* (?P<status>\d{3}) (?P<ms>-?\d+) ms\b")


@dataclass
class ChartBucket:
    start: datetime
    count: int = 0
    errors: int = 0
    latency_total: float = 0.0
    # SVG geometry, filled by invocation_chart.
    x: float = 0.0
    bar_y: float = 0.0
    bar_height: float = 0.0
    latency_y: float | None = None

    @property
    def mean_latency(self) -> float | None:
        return self.latency_total / self.count if self.count else None


@dataclass
class Chart:
    buckets: list[ChartBucket]
    max_count: int
    max_latency: float
    total: int
    width: int = 600
    height: int = 160
    bar_width: float = 0.0
    latency_points: str = ""


def invocation_chart(lines: Iterable[tuple[datetime, str]], *, now: datetime, minutes: int = 30) -> Chart:
    """Invocations and mean latency per minute over the last `minutes`, from (created_at,
    message) of runtime log lines; only access-log lines count."""
    start = (now - timedelta(minutes=minutes - 1)).replace(second=0, microsecond=0)
    buckets = [ChartBucket(start=start + timedelta(minutes=i)) for i in range(minutes)]
    for created_at, message in lines:
        if created_at < start or "/invocations" not in message:
            continue
        match = _ACCESS_LINE.search(message)
        if match is None:
            continue
        bucket = buckets[min(int((created_at - start).total_seconds() // 60), minutes - 1)]
        bucket.count += 1
        bucket.latency_total += max(int(match["ms"]), 0)
        bucket.errors += int(match["status"]) >= 500
    max_count = max((bucket.count for bucket in buckets), default=0)
    max_latency = max((bucket.mean_latency or 0 for bucket in buckets), default=0.0)
    chart = Chart(buckets=buckets, max_count=max_count, max_latency=max_latency, total=sum(b.count for b in buckets))
    plot_height = chart.height - 20
    chart.bar_width = chart.width / minutes
    points = []
    for i, bucket in enumerate(buckets):
        bucket.x = i * chart.bar_width
        bucket.bar_height = plot_height * bucket.count / max_count if max_count else 0
        bucket.bar_y = plot_height - bucket.bar_height
        latency = bucket.mean_latency
        if latency is not None and max_latency:
            bucket.latency_y = plot_height - plot_height * latency / max_latency
            points.append(f"{bucket.x + chart.bar_width / 2:.1f},{bucket.latency_y:.1f}")
    chart.latency_points = " ".join(points)
    return chart


# The confusion table's last row and column when it adds up the less frequent labels.
OTHER_LABELS = "other labels"


@dataclass(frozen=True)
class ConfusionCell:
    count: int
    agreed: bool  # the same label from both versions


@dataclass(frozen=True)
class HistogramBar:
    low: str
    high: str
    count: int
    width: float  # percent of the widest bar


@dataclass(frozen=True)
class ShadowPanel:
    """A comparison as the endpoint page's shadow panel shows it."""

    comparison: ShadowComparison
    agreement: str  # "75.0 %", "" when the kind has none
    error_rate: str
    mean_difference: str  # 4 significant digits, "" when the kind has none
    max_difference: str
    columns: list[str]  # the confusion table's labels
    rows: list[tuple[str, list[ConfusionCell]]]
    bars: list[HistogramBar]


def _percent(rate: float | None) -> str:
    return "" if rate is None else f"{rate * 100:.1f} %"


def _significant(number: float | None) -> str:
    return "" if number is None else f"{number:.4g}"


def shadow_panel(comparison: ShadowComparison) -> ShadowPanel:
    columns: list[str] = []
    rows: list[tuple[str, list[ConfusionCell]]] = []
    if table := comparison.confusion:
        columns = [*table.labels, *([OTHER_LABELS] if table.others else [])]
        # Labels beyond the table's are all "other": that cell is not an agreement.
        rows = [
            (label, [ConfusionCell(count, i == j and i < len(table.labels)) for j, count in enumerate(counts)])
            for i, (label, counts) in enumerate(zip(columns, table.counts, strict=True))
        ]
    bars: list[HistogramBar] = []
    if histogram := comparison.histogram:
        widest = max(histogram.counts) or 1
        bars = [
            HistogramBar(f"{low:.4g}", f"{high:.4g}", count, round(count / widest * 100, 1))
            for low, high, count in zip(histogram.edges, histogram.edges[1:], histogram.counts, strict=False)
        ]
    return ShadowPanel(
        comparison=comparison,
        agreement=_percent(comparison.agreement_rate),
        error_rate=_percent(comparison.error_rate),
        mean_difference=_significant(comparison.mean_abs_difference),
        max_difference=_significant(comparison.max_abs_difference),
        columns=columns,
        rows=rows,
        bars=bars,
    )
