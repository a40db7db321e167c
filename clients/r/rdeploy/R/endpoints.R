#' Deploy a model
#'
#' Creates the endpoint `name` serving `model` or, if the endpoint exists, updates it
#' blue/green to the new model version (traffic moves only once the new version answers).
#' While `wait` is `TRUE` the pipeline's steps are shown as they progress. An update keeps
#' the endpoint's target, public URL and options: `target`, `public` and `options` apply
#' when the endpoint is created.
#'
#' @param model A fitted model, a path to a saved model, or an `rdeploy_model` from
#'   [rdeploy_upload()] (uploaded first under `name` unless it is one).
#' @param name The endpoint's name (also the model's name when it is uploaded here).
#' @param target `"local"` (a container on the server) or `"sagemaker"`.
#' @param public Give the endpoint a public URL with its own API key.
#' @param options Target options (a named list), e.g. `list(instance_type = "ml.t2.medium")`.
#' @param wait Wait until the deployment finishes.
#' @param timeout Seconds to wait.
#' @param conn The connection (see [rdeploy_connect()]).
#' @return An `rdeploy_endpoint`. Its print shows the status and URLs, and the public
#'   API key once when the endpoint is created. A failed deployment raises a condition
#'   of class `rdeploy_deploy_failed`.
#' @export
rdeploy_deploy <- function(model, name, target = "local", public = FALSE, options = list(), wait = TRUE,
                           timeout = 900, conn = rdeploy_connection()) {
  version <- if (inherits(model, "rdeploy_model")) model else rdeploy_upload(model, name, conn = conn)
  existing <- tryCatch(rd_call("GET", paste0("endpoints/", name), conn), rdeploy_http_404 = function(e) NULL)
  if (is.null(existing)) {
    if (!length(options)) options <- structure(list(), names = character(0))
    body <- list(name = name, model = version$id, target = target, options = options, public = public)
    cli::cli_alert_info("Creating endpoint {.val {name}} ({target}) with {version$name} version {version$version}")
    answer <- rd_call("POST", "endpoints/", conn, json = body)
  } else {
    cli::cli_alert_info("Updating endpoint {.val {name}} to {version$name} version {version$version} (blue/green)")
    answer <- rd_call("POST", paste0("endpoints/", name, "/deployments"), conn, json = list(model = version$id))
  }
  rd_finish(answer, wait, timeout, conn)
}

#' Roll an endpoint back to its previous model version
#'
#' @param endpoint An `rdeploy_endpoint` or an endpoint's name.
#' @inheritParams rdeploy_deploy
#' @return The `rdeploy_endpoint`.
#' @export
rdeploy_rollback <- function(endpoint, wait = TRUE, timeout = 900, conn = rd_conn_of(endpoint)) {
  name <- rd_name_of(endpoint)
  cli::cli_alert_info("Rolling endpoint {.val {name}} back")
  rd_finish(rd_call("POST", paste0("endpoints/", name, "/rollback"), conn), wait, timeout, conn)
}

#' Delete an endpoint
#'
#' Stops serving and removes the endpoint's resources; the model versions stay.
#'
#' @inheritParams rdeploy_rollback
#' @return The endpoint's last state, invisibly.
#' @export
rdeploy_delete <- function(endpoint, wait = TRUE, timeout = 900, conn = rd_conn_of(endpoint)) {
  name <- rd_name_of(endpoint)
  cli::cli_alert_info("Deleting endpoint {.val {name}}")
  invisible(rd_finish(rd_call("DELETE", paste0("endpoints/", name), conn), wait, timeout, conn))
}

#' One endpoint
#'
#' @param name The endpoint's name.
#' @param conn The connection (see [rdeploy_connect()]).
#' @return An `rdeploy_endpoint`, to [predict()] with.
#' @export
rdeploy_endpoint <- function(name, conn = rdeploy_connection()) {
  rd_endpoint(rd_call("GET", paste0("endpoints/", name), conn), conn)
}

#' List endpoints
#'
#' @param conn The connection (see [rdeploy_connect()]).
#' @return A data frame, one row per endpoint.
#' @export
rdeploy_endpoints <- function(conn = rdeploy_connection()) {
  rows <- rd_list("endpoints/", conn)
  text <- function(field) vapply(rows, function(r) as.character(rd_value(r[[field]])), character(1))
  data.frame(
    name = text("name"),
    target = text("target"),
    status = text("status"),
    model = vapply(rows, function(r) if (is.null(r$model)) NA_character_ else r$model$name, character(1)),
    version = vapply(rows, function(r) if (is.null(r$model)) NA_integer_ else as.integer(r$model$version), integer(1)),
    public = vapply(rows, function(r) isTRUE(r$public), logical(1)),
    invoke_url = text("invoke_url"),
    public_url = text("public_url"),
    updated_at = text("updated_at"),
    stringsAsFactors = FALSE
  )
}

#' An endpoint's log lines
#'
#' Pipeline, build and runtime lines, oldest first.
#'
#' With `follow = TRUE` it works like `tail -f`: it prints each line as it arrives,
#' asking the server every `interval` seconds, and stops when `max_seconds` have
#' passed, when the endpoint is deleted, or when you interrupt it (Ctrl-C, or Esc in
#' RStudio). However it stops, it returns the lines it saw, invisibly.
#'
#' @param endpoint An `rdeploy_endpoint` or an endpoint's name.
#' @param follow Keep printing new lines as they arrive (see Details).
#' @param after Only lines after this line id.
#' @param max_seconds With `follow`, stop after this many seconds (default: never).
#' @param interval With `follow`, seconds between two requests for new lines.
#' @param conn The connection (see [rdeploy_connect()]).
#' @return A data frame of log lines (invisibly when `follow` is `TRUE`).
#' @export
rdeploy_logs <- function(endpoint, follow = FALSE, after = 0, max_seconds = Inf, interval = 1,
                         conn = rd_conn_of(endpoint)) {
  name <- rd_name_of(endpoint)
  pages <- list(rd_log_frame(list()))
  deadline <- Sys.time() + max_seconds
  poll <- function() {
    repeat {
      page <- rd_call("GET", paste0("endpoints/", name, "/logs"), conn, query = list(after = after))
      lines <- rd_log_frame(page$lines)
      pages[[length(pages) + 1]] <<- lines
      after <<- page$`next`
      if (follow) {
        for (i in seq_len(nrow(lines))) cat(lines$created_at[i], " ", lines$source[i], " ", lines$message[i], "\n", sep = "")
      }
      if (nrow(lines)) next
      if (!follow || Sys.time() >= deadline) break
      if (identical(rd_call("GET", paste0("endpoints/", name), conn)$status, "deleted")) break
      Sys.sleep(max(0, min(interval, as.numeric(difftime(deadline, Sys.time(), units = "secs")))))
    }
  }
  if (follow) {
    # Ctrl-C ends the following, not the call: the lines seen so far are returned.
    tryCatch(poll(), interrupt = function(e) NULL, rdeploy_http_404 = function(e) NULL)
  } else {
    poll()
  }
  lines <- do.call(rbind, pages)
  rownames(lines) <- NULL
  if (follow) invisible(lines) else lines
}

rd_log_frame <- function(rows) {
  text <- function(field) vapply(rows, function(r) as.character(rd_value(r[[field]])), character(1))
  data.frame(
    id = vapply(rows, function(r) as.integer(r$id), integer(1)),
    created_at = text("created_at"), source = text("source"), level = text("level"), message = text("message"),
    stringsAsFactors = FALSE
  )
}

rd_busy <- c("pending", "building", "deploying", "updating", "deleting")

rd_name_of <- function(endpoint) if (inherits(endpoint, "rdeploy_endpoint")) endpoint$name else endpoint

rd_conn_of <- function(endpoint) {
  if (inherits(endpoint, "rdeploy_endpoint")) endpoint$conn else rdeploy_connection()
}

# Follows the deployment the API just started, printing each step once as it starts and
# ends, then returns the endpoint (or raises rdeploy_deploy_failed with the pipeline's error).
rd_finish <- function(answer, wait, timeout, conn) {
  key <- answer$api_key
  deployment <- answer$deployment$id
  deadline <- Sys.time() + timeout
  seen <- character(0)
  while (wait) {
    current <- answer$deployment
    for (step in if (identical(current$id, deployment)) current$steps else list()) {
      mark <- paste(step$name, step$status)
      if (step$status != "pending" && !mark %in% seen) {
        seen <- c(seen, mark)
        label <- gsub("_", " ", step$name)
        switch(step$status,
          running = cli::cli_alert("{label} ..."),
          succeeded = cli::cli_alert_success(label),
          skipped = cli::cli_alert_info("{label} (skipped)"),
          failed = cli::cli_alert_danger("{label}: {rd_value(step$message, '')}")
        )
      }
    }
    finished <- !identical(current$id, deployment) || current$status %in% c("succeeded", "failed")
    if ((finished && !answer$status %in% rd_busy) || identical(answer$status, "deleted")) break
    if (Sys.time() > deadline) {
      rd_condition(paste0("The deployment did not finish within ", timeout, " seconds."), "rdeploy_timeout")
    }
    Sys.sleep(1)
    answer <- tryCatch(rd_call("GET", paste0("endpoints/", answer$name), conn), rdeploy_http_404 = function(e) {
      answer$status <- "deleted"
      answer
    })
  }
  if (wait && identical(answer$deployment$status, "failed") && identical(answer$deployment$id, deployment)) {
    rd_condition(
      paste0("Deployment of '", answer$name, "' failed: ", rd_value(answer$deployment$error, answer$error)),
      "rdeploy_deploy_failed",
      endpoint = answer
    )
  }
  answer$api_key <- key
  rd_endpoint(answer, conn)
}

rd_endpoint <- function(fields, conn) {
  secret <- new.env(parent = emptyenv())
  secret$api_key <- fields$api_key
  fields$api_key <- NULL
  structure(c(fields, list(conn = conn, secret = secret)), class = "rdeploy_endpoint")
}

#' @export
print.rdeploy_endpoint <- function(x, ...) {
  cat("<rdeploy endpoint> ", x$name, " (", x$target, "): ", x$status, "\n", sep = "")
  if (!is.null(x$model)) cat("  model:      ", x$model$name, " version ", x$model$version, "\n", sep = "")
  if (nzchar(rd_value(x$invoke_url, ""))) cat("  invoke URL: ", x$invoke_url, "\n", sep = "")
  if (nzchar(rd_value(x$public_url, ""))) cat("  public URL: ", x$public_url, "\n", sep = "")
  if (!is.null(x$secret$api_key)) {
    # Shown once: the server keeps only its hash.
    cat("  API key:    ", x$secret$api_key, "  (shown once: keep it now)\n", sep = "")
    x$secret$api_key <- NULL
  }
  if (nzchar(rd_value(x$error, ""))) cat("  error:      ", x$error, "\n", sep = "")
  invisible(x)
}
