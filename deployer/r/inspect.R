# Inspects an uploaded model inside a locked-down container (deployer/integrations/containers/sandbox.py)
# with the serving runtime's own code, so whatever inspection accepts an endpoint serves
# the same way: rd_load_model() loads it, rd_invocation() parses, coerces, predicts and
# formats the example request exactly as POST /invocations would.
#
# Usage: Rscript --vanilla inspect.R <model dir> <sample file or ""> <packages, comma-separated>
# Environment: RDEPLOY_RUNTIME_DIR (holds rdeploy_runtime.R).
# Prints one line of JSON on stdout:
#   {"status": "ok", "r_version": ..., "class": [...], "packages": {...}, "schema": ...,
#    "schema_source": ..., "prediction": {...}, "example": {...}, "timings": {...}, "warnings": [...]}
#   {"status": "invalid", "code": ..., "reason": "...", "missing_packages": [...], ...}
# Anything the model itself prints goes to stderr.

started <- proc.time()[["elapsed"]]
args <- commandArgs(trailingOnly = TRUE)
model_dir <- args[1]
sample_path <- if (length(args) >= 2) args[2] else ""
requested <- if (length(args) >= 3) trimws(strsplit(args[3], ",", fixed = TRUE)[[1]]) else character(0)
requested <- unique(requested[nzchar(requested)])

source(file.path(Sys.getenv("RDEPLOY_RUNTIME_DIR"), "rdeploy_runtime.R"))
suppressPackageStartupMessages(library(jsonlite))
result_stdout <- stdout()
sink(stderr())

timings <- list(startup = round(proc.time()[["elapsed"]] - started, 4))
r_version <- paste(R.version$major, R.version$minor, sep = ".")
warnings_seen <- character(0)

timed <- function(name, expr) {
  t0 <- proc.time()[["elapsed"]]
  on.exit(timings[[name]] <<- round(proc.time()[["elapsed"]] - t0, 4))
  force(expr)
}

emit <- function(result) {
  timings$total <<- round(proc.time()[["elapsed"]] - started, 4)
  result$timings <- timings
  result$reader_r_version <- r_version
  sink()
  cat(toJSON(result, auto_unbox = TRUE, null = "null", na = "null", digits = NA, json_verbatim = TRUE),
    "\n", sep = "", file = result_stdout)
  quit(save = "no", status = 0)
}

fail <- function(code, reason, ...) emit(list(status = "invalid", code = code, reason = reason, ...))

installed <- function(packages) vapply(packages, function(p) nzchar(system.file(package = p)), logical(1))

missing_packages <- function(packages) {
  fail(
    "missing_packages",
    paste0("R packages not installed on this server: ", paste(packages, collapse = ", ")),
    missing_packages = I(packages)
  )
}

out_of_memory_if <- function(message) {
  if (grepl("cannot allocate|memory exhausted", message)) {
    fail("out_of_memory", paste0("R ran out of memory: ", message))
  }
}

# ---- Declared packages: renv.lock and the user's list ---------------------------------
renv_packages <- list()
lock_path <- file.path(model_dir, "renv.lock")
if (file.exists(lock_path)) {
  lock <- tryCatch(fromJSON(lock_path, simplifyVector = FALSE), error = function(e) {
    fail("bad_renv_lock", paste0("renv.lock is not valid JSON: ", conditionMessage(e)))
  })
  renv_packages <- lapply(unname(lock$Packages), function(p) list(name = p$Package, version = p$Version))
}
renv_names <- vapply(renv_packages, function(p) p$name, character(1))
renv_missing <- setdiff(renv_names[!installed(renv_names)], "renv")
if (length(renv_missing)) {
  warnings_seen <- c(warnings_seen, paste0(
    "renv.lock lists packages this server does not have: ", paste(renv_missing, collapse = ", "),
    " (images built from renv.lock install them; set RDEPLOY_CRAN_REPO to install them for local serving)"
  ))
}
if (length(requested) && !all(installed(requested))) missing_packages(requested[!installed(requested)])

# ---- Load with the runtime -------------------------------------------------------------
bundle <- tryCatch(
  timed("load", {
    rd_attach_packages(requested)
    rd_load_model(model_dir)
  }),
  error = function(e) {
    message <- conditionMessage(e)
    out_of_memory_if(message)
    absent <- regmatches(message, regexpr("(?<=there is no package called .)[A-Za-z0-9.]+", message, perl = TRUE))
    if (length(absent)) missing_packages(absent)
    if (grepl("not installed in this image: ", message, fixed = TRUE)) {
      missing_packages(strsplit(sub(".*not installed in this image: ", "", message), ", ", fixed = TRUE)[[1]])
    }
    fail("load_failed", paste0("R could not load the model: ", message))
  }
)
model <- bundle$model
hooks <- bundle$hooks
model_class <- class(model)

# ---- Is it a model? -------------------------------------------------------------------
predict_package <- character(0)
if (is.null(hooks$predict_fn)) {
  for (cls in model_class) {
    method <- utils::getS3method("predict", cls, optional = TRUE)
    if (!is.null(method)) {
      predict_package <- environmentName(environment(method))
      break
    }
  }
  if (!length(predict_package) && isS4(model) && methods::hasMethod("predict", model_class[1])) {
    predict_package <- attr(model_class, "package")
  }
  if (!length(predict_package)) {
    fail("not_a_model", paste0(
      "not an R model: an object of class ", paste(model_class, collapse = "/"), " has no predict() method. ",
      "Upload a fitted model (e.g. what lm(), glm(), randomForest() or ranger() return) saved with saveRDS(), ",
      "or a bundle whose predict.R defines predict_fn(model, data). If its predict() method comes from a ",
      "package this server lacks, name that package in `packages`"
    ))
  }
}
required <- setdiff(unique(c(predict_package, rd_infer_packages(model), bundle$packages, requested)), rd_base_packages)
required <- required[nzchar(required)]
package_version <- function(p) tryCatch(utils::packageDescription(p)$Version, error = function(e) NA_character_)
packages <- list(
  required = lapply(required, function(p) list(name = p, version = package_version(p))),
  predict_method = if (length(predict_package)) predict_package else NULL,
  requested = I(requested),
  renv_lock = renv_packages,
  renv_missing = I(renv_missing)
)

# ---- Input schema: the model's own record, else the sample ----------------------------
schema <- bundle$schema
schema_source <- if (!is.null(bundle$config$schema)) "rdeploy.json" else if (!is.null(schema)) "model" else NULL
sample_rows <- NULL
read_sample <- function() {
  text <- paste(readLines(sample_path, warn = FALSE, encoding = "UTF-8"), collapse = "\n")
  content_type <- if (grepl("^\\s*[\\[{]", text, perl = TRUE)) "application/json" else "text/csv"
  list(text = text, content_type = content_type)
}
if (nzchar(sample_path)) {
  sample <- read_sample()
  sample_rows <- timed("sample", tryCatch(rd_parse_input(sample$text, sample$content_type, schema), error = function(e) {
    fail("sample_mismatch", paste0("the sample does not fit the model's inputs: ", conditionMessage(e)))
  }))
  if (is.null(schema)) {
    schema <- rd_schema_from_data(sample_rows)
    schema_source <- "sample"
  }
}
if (is.null(schema)) {
  warnings_seen <- c(warnings_seen, paste(
    "the model does not record its input columns and no sample was uploaded:",
    "upload again with a sample (CSV or JSON records) to get an input schema and an example request"
  ))
}

# ---- Classes of a classifier without probabilities ------------------------------------
# The example's answer names only the classes predicted for its rows, yet clients rebuild
# a factor with every level (in the model's order) from the inspection. Without a
# probability call to name them, they come from the factor predict() returns for the
# same rows, parsed and predicted as rd_invocation() does, or, when a predict_fn answers
# plain strings, from the levels the model's package keeps, if they cover those strings.
class_levels <- function(payload, predicted) {
  data <- if (is.null(hooks$input_fn)) {
    rd_parse_input(payload, "application/json", bundle$schema, bundle$plan)
  } else {
    hooks$input_fn(payload, "application/json")
  }
  raw <- if (is.null(hooks$predict_fn)) bundle$plan$predictor(model, data) else hooks$predict_fn(model, data)
  if (is.list(raw) && !is.data.frame(raw) && !is.null(raw$predictions)) raw <- raw$predictions
  if (is.data.frame(raw) && ncol(raw) == 1) raw <- raw[[1]]
  if (is.factor(raw)) return(levels(raw))
  kept <- if (inherits(model, "svm")) model$levels else if (inherits(model, "ranger")) model$forest$levels
  if (length(kept) && all(predicted %in% kept)) kept else NULL
}

# ---- Example request through the runtime's own request path ----------------------------
example <- NULL
prediction <- list(kind = "unknown")
if (!is.null(schema)) {
  rows <- if (!is.null(sample_rows)) utils::head(sample_rows, 5) else rd_example_data(schema)
  rows <- rows[, rd_schema_names(schema), drop = FALSE]
  payload <- toJSON(rows, dataframe = "rows", factor = "string", Date = "ISO8601", digits = NA, na = "null")
  headers <- "Content-Type: application/json\nAccept: application/json"
  response <- timed("predict", tryCatch(rd_invocation(bundle, charToRaw(payload), headers), error = function(e) {
    message <- conditionMessage(e)
    out_of_memory_if(message)
    if (inherits(e, "rdeploy_bad_input")) fail("sample_mismatch", paste0("the example input was refused: ", message))
    fail("predict_failed", paste0("predict() failed on the example input: ", message))
  }))
  predictions <- fromJSON(response$body, simplifyVector = TRUE)$predictions
  kind <- if (is.data.frame(predictions)) {
    "probabilities"
  } else if (is.character(predictions)) {
    "class"
  } else if (is.logical(predictions)) {
    "logical"
  } else if (is.numeric(predictions) && inherits(model, "glm") && identical(model$family$family, "binomial")) {
    "probability"
  } else if (is.numeric(predictions)) {
    "numeric"
  } else {
    "other"
  }
  prediction <- list(kind = kind)
  if (is.null(hooks$predict_fn)) {
    probabilities <- tryCatch(
      rd_invocation(bundle, charToRaw(payload), paste0(headers, "\nX-Amzn-SageMaker-Custom-Attributes: type=prob")),
      error = function(e) NULL
    )
    prediction$probabilities <- !is.null(probabilities)
    if (!is.null(probabilities)) {
      prediction$classes <- I(names(fromJSON(probabilities$body, simplifyVector = TRUE)$predictions))
    }
  }
  if (kind == "class" && is.null(prediction$classes)) {
    classes <- tryCatch(class_levels(payload, predictions), error = function(e) NULL)
    if (length(classes)) prediction$classes <- I(classes)
  }
  example <- list(
    content_type = "application/json",
    payload = payload,
    rows = nrow(rows),
    predictions = structure(response$body, class = "json")
  )
}

schema_json <- if (is.null(schema)) NULL else list(columns = lapply(schema$columns, function(column) {
  out <- list(name = column$name, type = column$type)
  if (!is.null(column$levels)) out$levels <- I(as.character(unlist(column$levels)))
  out
}))

emit(list(
  status = "ok",
  class = I(model_class),
  hooks = I(as.character(names(hooks))),
  packages = packages,
  schema = schema_json,
  schema_source = schema_source,
  prediction = prediction,
  example = example,
  warnings = I(warnings_seen)
))
