#' Upload a model and wait for its inspection
#'
#' Saves a fitted model with [saveRDS()] (or takes a path to an `.rds` file or a
#' `.tar.gz`/`.zip` bundle holding `model.rds`), uploads it, waits while rdeploy
#' inspects it in a container and prints what it found: the model's class, the
#' packages it needs and its input schema.
#'
#' @param model A fitted model object, or the path of a saved model or bundle.
#' @param name The model's name: lowercase letters, digits and hyphens.
#' @param sample Optional example input: a data frame (a few rows), or a path to a CSV or
#'   JSON file. It gives the schema when the model does not record one.
#' @param packages Optional extra R packages the model needs (a character vector).
#' @param wait Wait for the inspection (default `TRUE`).
#' @param timeout Seconds to wait for the inspection.
#' @param conn The connection (see [rdeploy_connect()]).
#' @return An `rdeploy_model`: the model version as the API shows it.
#'   An invalid model raises a condition of class `rdeploy_invalid_model` whose
#'   message is rdeploy's reason.
#' @export
rdeploy_upload <- function(model, name, sample = NULL, packages = NULL, wait = TRUE, timeout = 600,
                           conn = rdeploy_connection()) {
  path <- rd_model_file(model)
  parts <- list(name = name, file = curl::form_file(path))
  if (!is.null(sample)) parts$sample <- rd_sample_file(sample)
  if (length(packages)) parts$packages <- paste(packages, collapse = ",")
  size <- format(structure(file.size(path), class = "object_size"), units = "auto")
  bar <- cli::cli_progress_bar(
    format = paste("Uploading", name, "({size}) {cli::pb_bar} {cli::pb_percent}"),
    total = 1, auto_terminate = FALSE
  )
  # curl reports (total, sent) for the upload while it runs; TRUE carries on.
  progress <- function(down, up) {
    # A display problem must not abort the upload.
    if (up[[1]] > 0) try(cli::cli_progress_update(id = bar, set = up[[2]] / up[[1]]), silent = TRUE)
    TRUE
  }
  version <- rd_call("POST", "models/", conn, multipart = parts, progress = progress)
  cli::cli_progress_done(id = bar)
  cli::cli_alert_success("Uploaded {.val {name}} ({size}): version {version$version}")
  if (wait && identical(version$status, "inspecting")) version <- rd_wait_inspection(version, timeout, conn)
  model_version <- structure(version, class = "rdeploy_model")
  if (identical(version$status, "invalid")) {
    rd_condition(
      paste0("Model '", version$name, "' version ", version$version, " is invalid: ", rd_value(version$status_reason, "")),
      "rdeploy_invalid_model",
      model_version = model_version, reason = version$status_reason
    )
  }
  if (identical(version$status, "ready")) rd_report_inspection(model_version)
  model_version
}

rd_model_file <- function(model) {
  if (is.character(model) && length(model) == 1 && !is.object(model)) {
    if (!file.exists(model)) stop("No model file at '", model, "'.", call. = FALSE)
    return(model)
  }
  path <- file.path(tempfile("rdeploy"), "model.rds")
  dir.create(dirname(path))
  saveRDS(model, path)
  path
}

rd_sample_file <- function(sample) {
  if (is.character(sample) && length(sample) == 1) {
    if (!file.exists(sample)) stop("No sample file at '", sample, "'.", call. = FALSE)
    return(curl::form_file(sample))
  }
  if (!is.data.frame(sample)) stop("`sample` must be a data frame or a file path.", call. = FALSE)
  path <- tempfile("sample", fileext = ".json")
  writeLines(rd_records(utils::head(sample, 20)), path)
  curl::form_file(path, type = "application/json")
}

# A data frame as JSON records, as the runtime reads them (factors as their labels).
rd_records <- function(data) {
  jsonlite::toJSON(data, dataframe = "rows", factor = "string", Date = "ISO8601", digits = NA, na = "null", rownames = FALSE)
}

rd_wait_inspection <- function(version, timeout, conn) {
  cli::cli_progress_step("Inspecting {.val {version$name}} version {version$version}")
  deadline <- Sys.time() + timeout
  while (identical(version$status, "inspecting")) {
    if (Sys.time() > deadline) {
      rd_condition(paste0("The inspection did not finish within ", timeout, " seconds."), "rdeploy_timeout")
    }
    Sys.sleep(1)
    version <- rd_call("GET", paste0("models/", version$id, "/"), conn)
  }
  if (identical(version$status, "ready")) cli::cli_progress_done() else cli::cli_progress_done(result = "failed")
  version
}

rd_report_inspection <- function(version) {
  inspection <- version$inspection
  packages <- vapply(rd_value(inspection$packages$required, list()), function(p) p$name, character(1))
  columns <- vapply(rd_value(inspection$schema$columns, list()), function(column) {
    paste0(column$name, " <", column$type, ">")
  }, character(1))
  cli::cli_alert_success("{.val {version$name}} version {version$version} is ready")
  cli::cli_bullets(c(
    " " = "class: {paste(unlist(inspection$class), collapse = ', ')}",
    " " = "packages: {if (length(packages)) paste(packages, collapse = ', ') else 'none'}",
    " " = "schema: {if (length(columns)) paste(columns, collapse = ', ') else 'none recorded'}",
    " " = "prediction: {rd_value(inspection$prediction$kind, 'unknown')}"
  ))
}

#' @export
print.rdeploy_model <- function(x, ...) {
  cat("<rdeploy model> ", x$name, " version ", x$version, " (", x$status, ")\n", sep = "")
  if (!is.null(x$status_reason) && nzchar(x$status_reason)) cat("  reason: ", x$status_reason, "\n", sep = "")
  if (!is.null(x$inspection$class)) cat("  class: ", paste(unlist(x$inspection$class), collapse = ", "), "\n", sep = "")
  invisible(x)
}

#' List uploaded model versions
#'
#' @param name Only the versions of this model name (optional).
#' @param conn The connection (see [rdeploy_connect()]).
#' @return A data frame, one row per model version.
#' @export
rdeploy_models <- function(name = NULL, conn = rdeploy_connection()) {
  rows <- rd_list("models/", conn, query = if (!is.null(name)) list(name = name))
  data.frame(
    id = vapply(rows, function(r) as.integer(r$id), integer(1)),
    name = vapply(rows, function(r) r$name, character(1)),
    version = vapply(rows, function(r) as.integer(r$version), integer(1)),
    status = vapply(rows, function(r) r$status, character(1)),
    status_reason = vapply(rows, function(r) as.character(rd_value(r$status_reason)), character(1)),
    created_at = vapply(rows, function(r) as.character(rd_value(r$created_at)), character(1)),
    stringsAsFactors = FALSE
  )
}
