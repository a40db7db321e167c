"""The runtime's lean request path gives exactly what its general path gives.

rdeploy_runtime.R parses the common requests (plain CSV, JSON records of scalars) without the general parsers,
and parses the header block once. These tests run real R on both paths for the same inputs and compare the results with
identical(), errors included, so the fast path can never change what a client gets.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

RUNTIME = Path(__file__).resolve().parent.parent / "runtime" / "rdeploy_runtime.R"

# Each case: schema name, CSV body. Both paths parse it; results (or errors) must be identical.
CASES: list[tuple[str, str]] = [
    ("numeric", "a,b,c\n1,2.5,3\n"),
    ("numeric", "a,b,c\n1,2.5,3"),
    ("numeric", '"a","b","c"\n1,2.5,3\n'),
    ("numeric", "1,2.5,3\n"),
    ("numeric", "1,2.5,3\n4,5,6\n7,8,9e3\n"),
    ("numeric", "a,b,c\n1,2.5,3\n\n4,5,6\n"),
    ("numeric", "a,b,c\r\n1,2.5,3\r\n"),
    ("numeric", "a,b,c\n1,,3\n"),
    ("numeric", "a,b,c\nNA,2,3\n"),
    ("numeric", "a,b,c\nInf,-Inf,0x1A\n"),
    ("numeric", "a,b,c\n1,2,x\n"),
    ("numeric", "a,b,c\n1,2\n"),
    ("numeric", "a,b,c\n1,2,3,4\n"),
    ("numeric", "a,b,c\n1,2,\n"),
    ("numeric", "a,b,c\n"),
    ("numeric", "c,b,a\n1,2,3\n"),
    ("numeric", "a,b,c,extra\n1,2,3,x\n"),
    ("numeric", "a,b\n1,2\n"),
    ("numeric", "a, b, c\n 1, 2, 3\n"),
    ("numeric", 'a,b,c\n1,"2",3\n'),
    ("numeric", "1,2,a\n"),
    ("numeric", "\n\n"),
    ("numeric", "a,b,c\n" + "1.5,2,3\n" * 120),
    ("mixed", "x,group\n1.5,low\n"),
    ("mixed", "x,group\n1.5,low\n2,high\n3,mid\n"),
    ("mixed", "2,mid\n"),
    ("mixed", "x,group\n1.5,extreme\n"),
    ("mixed", "x,group\nfast,extreme\n"),
    ("mixed", "x,group\n1.5,\n"),
    ("mixed", "x,group\n1.5,NA\n"),
    ("ordered", "size\nS\nL\n"),
    ("ordered", "size\nXL\n"),
    ("integer", "n\n3\n"),
]

R_SCRIPT = r"""
source(Sys.getenv("RDEPLOY_RUNTIME_FILE"))
schemas <- list(
  numeric = list(columns = list(list(name = "a", type = "numeric"), list(name = "b", type = "numeric"),
                                list(name = "c", type = "numeric"))),
  mixed = list(columns = list(list(name = "x", type = "numeric"),
                              list(name = "group", type = "factor", levels = list("low", "mid", "high")))),
  ordered = list(columns = list(list(name = "size", type = "ordered", levels = c("S", "M", "L")))),
  integer = list(columns = list(list(name = "n", type = "integer")))
)
outcome <- function(expr) {
  tryCatch(list(value = expr), error = function(e) list(class = class(e), message = conditionMessage(e)))
}
cases <- jsonlite::fromJSON(Sys.getenv("RDEPLOY_CASES"), simplifyVector = FALSE)
results <- lapply(cases, function(case) {
  schema <- schemas[[case[[1]]]]
  body <- charToRaw(case[[2]])
  plan <- rd_schema_plan(schema)
  general <- plan
  general$simple_csv <- FALSE
  fast <- outcome(rd_parse_input(body, "text/csv", schema, plan))
  slow <- outcome(rd_parse_input(body, "text/csv", schema, general))
  list(
    same = identical(fast, slow),
    fast_path = !is.null(tryCatch(rd_read_simple_csv(case[[2]], plan), error = function(e) "raised")),
    fast = paste(capture.output(str(fast)), collapse = "\n"),
    general = paste(capture.output(str(slow)), collapse = "\n")
  )
})
cat(jsonlite::toJSON(results, auto_unbox = TRUE))
"""


def run_r(script: str, **env: str) -> Any:
    rscript = os.environ.get("RDEPLOY_RSCRIPT") or "Rscript"
    result = subprocess.run(
        [rscript, "--vanilla", "-e", script],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "RDEPLOY_RUNTIME_FILE": str(RUNTIME), **env},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def parsed() -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = run_r(R_SCRIPT, RDEPLOY_CASES=json.dumps(CASES))
    return results


@pytest.mark.parametrize(("index", "case"), list(enumerate(CASES)), ids=[repr(body[:40]) for _, body in CASES])
def test_simple_csv_parses_exactly_like_the_general_parser(
    parsed: list[dict[str, Any]], index: int, case: tuple[str, str]
) -> None:
    result = parsed[index]
    assert result["same"], f"fast path:\n{result['fast']}\ngeneral path:\n{result['general']}"


def test_the_common_requests_take_the_simple_csv_path(parsed: list[dict[str, Any]]) -> None:
    taken = {CASES[i][1] for i, result in enumerate(parsed) if result["fast_path"]}
    for body in [
        "a,b,c\n1,2.5,3\n",
        '"a","b","c"\n1,2.5,3\n',
        "1,2.5,3\n",
        "1,2.5,3\n4,5,6\n7,8,9e3\n",
        "x,group\n1.5,low\n2,high\n3,mid\n",
        "a,b,c\n" + "1.5,2,3\n" * 120,
    ]:
        assert body in taken


JSON_BODIES = [
    '[{"a":1,"b":"x"}]',
    '[{"a":1,"b":"x"},{"a":2.5,"b":"y"}]',
    '{"instances":[{"a":1,"b":"x"}]}',
    '{"a":[1,2],"b":["x","y"]}',
    '{"a":1,"b":"x"}',
    '[{"a":true},{"a":false}]',
    '{"instances":{"a":[1,2]}}',
    '[{"a":12345678901234,"b":1e400}]',
    '[{"a":"\u00e9","b":"\\u0000x"}]',
    '[{"a":1,"b":null}]',
    '[{"a":1},{"b":2}]',
    '[{"a":1,"b":2},{"b":2,"a":1}]',
    "[[1,2]]",
    '{"instances":[[1,2]]}',
    '[{"a":"1"},{"a":2}]',
    '{"a":[true,1]}',
    '[{"a":[1,2]}]',
    '{"a":[1,2],"b":[1]}',
    '{"a":[1,null]}',
    '{"a":{"b":1}}',
    '[{"a":1,"a":2}]',
    '[{"":1}]',
    "[]",
    "{}",
    "null",
    "[{",
    "1",
    "[1,2]",
    '{"instances":[]}',
]

JSON_SCRIPT = r"""
source(Sys.getenv("RDEPLOY_RUNTIME_FILE"))
bodies <- jsonlite::fromJSON(Sys.getenv("RDEPLOY_CASES"), simplifyVector = FALSE)
results <- lapply(bodies, function(body) {
  fast <- rd_read_simple_json(body)
  general <- tryCatch(rd_read_json(body, NULL), error = function(e) conditionMessage(e))
  list(fast_path = !is.null(fast), same = is.null(fast) || identical(fast, general),
       fast = paste(capture.output(str(fast)), collapse = "\n"),
       general = paste(capture.output(str(general)), collapse = "\n"))
})
cat(jsonlite::toJSON(results, auto_unbox = TRUE))
"""


def test_simple_json_gives_the_columns_jsonlite_simplification_gives() -> None:
    results = run_r(JSON_SCRIPT, RDEPLOY_CASES=json.dumps(JSON_BODIES))
    for body, result in zip(JSON_BODIES, results, strict=True):
        assert result["same"], f"{body}\nfast path:\n{result['fast']}\ngeneral path:\n{result['general']}"
    # Records, instances and columns of plain scalars take the simple path; nulls, mixed types,
    # nesting, rows without names and malformed bodies are left to the general one.
    assert [r["fast_path"] for r in results] == [True] * 9 + [False] * (len(JSON_BODIES) - 9)


def test_headers_are_parsed_once_into_values_named_by_lower_case_names() -> None:
    script = r"""
    source(Sys.getenv("RDEPLOY_RUNTIME_FILE"))
    h <- rd_parse_headers(paste0(
      "Request-Method: POST\nHost: x\nContent-Type:text/csv \r\nACCEPT:  text/csv\n",
      "no colon here\nX-Amzn-SageMaker-Custom-Attributes: type=prob\ncontent-type: application/json\n"
    ))
    cat(jsonlite::toJSON(list(
      method = rd_header_value(h, "request-method"),
      content_type = rd_header_value(h, "content-type"),
      accept = rd_header_value(h, "accept"),
      attributes = rd_header_value(h, "x-amzn-sagemaker-custom-attributes"),
      absent = rd_header_value(h, "x-absent"),
      again = identical(rd_parse_headers(h), h),
      empty = rd_header_value(rd_parse_headers(""), "content-type")
    ), auto_unbox = TRUE))
    """
    assert run_r(script) == {
        "method": "POST",
        "content_type": "text/csv",
        "accept": "text/csv",
        "attributes": "type=prob",
        "absent": "",
        "again": True,
        "empty": "",
    }
