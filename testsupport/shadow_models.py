"""Model pairs for the shadow tests, and what R itself answers for them, computed by R in
the serving image (model code never runs on the host; training is model code too).

``shadow_models(directory, image)`` writes, once per directory:

- ``lm_v1/model.rds`` (mpg ~ wt) and ``lm_v2/model.rds`` (mpg ~ wt + hp), two numeric
  fits on mtcars;
- ``lm_fragile/``: lm_v2 with a predict.R whose predict_fn stops, with FRAGILE_ERROR,
  for a request holding a car heavier than FRAGILE_LIMIT (wt in 1000 lb): three of
  mtcars' 32 rows;
- ``expected.json``: ``mtcars`` (the 32 rows, wt and hp), ``lm_v1`` and ``lm_v2`` (each
  row's prediction as the runtime writes it, as.character's 15 significant digits) and
  ``lm_difference`` (lm_v2 - lm_v1 of those values, to the last bit: %.17g); ``iris``
  (the 150 rows' four measures), ``iris_v1`` and ``iris_v2`` (the labels the iris
  versions of testsupport/train_models.R predict for them: ``iris_models``) and
  ``iris_agree`` (whether the two agree, per row).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deployer.integrations.containers import cli

FRAGILE_LIMIT = 4
FRAGILE_ERROR = "a car above 4000 lb is out of range"

_SCRIPT = f"""
suppressPackageStartupMessages({{ library(jsonlite); library(randomForest) }})
work <- "/work"
for (name in c("lm_v1", "lm_v2", "lm_fragile")) dir.create(file.path(work, name), showWarnings = FALSE)
v1 <- lm(mpg ~ wt, data = mtcars)
v2 <- lm(mpg ~ wt + hp, data = mtcars)
saveRDS(v1, file.path(work, "lm_v1", "model.rds"))
saveRDS(v2, file.path(work, "lm_v2", "model.rds"))
saveRDS(v2, file.path(work, "lm_fragile", "model.rds"))
writeLines(c(
  "predict_fn <- function(model, data) {{",
  "  if (any(data$wt > {FRAGILE_LIMIT})) stop('{FRAGILE_ERROR}')",
  "  unname(predict(model, data))",
  "}}"
), file.path(work, "lm_fragile", "predict.R"))
cars <- mtcars[, c("wt", "hp")]
rownames(cars) <- NULL
# As the runtime writes them (rd_json_values: as.character), and read back as a client would.
answered_v1 <- as.character(unname(predict(v1, cars)))
answered_v2 <- as.character(unname(predict(v2, cars)))
difference <- sprintf("%.17g", as.numeric(answered_v2) - as.numeric(answered_v1))
flowers <- iris[, 1:4]
iris_v1 <- as.character(predict(readRDS(file.path(work, "iris", "v1.rds")), flowers))
iris_v2 <- as.character(predict(readRDS(file.path(work, "iris", "v2.rds")), flowers))
write_json(
  list(
    mtcars = cars, lm_v1 = answered_v1, lm_v2 = answered_v2, lm_difference = difference,
    iris = flowers, iris_v1 = iris_v1, iris_v2 = iris_v2, iris_agree = iris_v1 == iris_v2
  ),
  file.path(work, "expected.json"), dataframe = "rows", digits = NA
)
"""


def shadow_models(directory: Path, image: str, iris_models: Path) -> dict[str, Any]:
    """Trains the pairs in ``directory`` with R in ``image`` (a serving image with
    randomForest) on the first call; expected.json's content and ``directory``."""
    expected = directory / "expected.json"
    if not expected.exists():
        directory.mkdir(parents=True, exist_ok=True)
        iris = directory / "iris"
        iris.mkdir(exist_ok=True)
        for version in ("v1", "v2"):
            (iris / f"{version}.rds").write_bytes((iris_models / f"{version}.rds").read_bytes())
        cli.check(
            ["run", "--rm", "--network", "none", "--volume", f"{directory}:/work", image, "Rscript", "-e", _SCRIPT]
        )
    return {**json.loads(expected.read_text()), "directory": str(directory)}
