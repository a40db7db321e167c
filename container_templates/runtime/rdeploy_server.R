# The R half of `serve`: loads the model once, then serves it on a loopback
# port with Rserve's built-in HTTP server, which forks one child per
# connection from this fully loaded process (copy-on-write: a child starts in
# about a millisecond with the model already in memory). HAProxy in front
# bounds how many connections reach it; see README.md for why.
source(file.path(Sys.getenv("RDEPLOY_RUNTIME_DIR"), "rdeploy_runtime.R"))

env_int <- function(name, default) {
  value <- Sys.getenv(name, as.character(default))
  number <- suppressWarnings(as.integer(value))
  if (is.na(number) || number < 1) stop(name, " must be a positive integer, got '", value, "'", call. = FALSE)
  number
}

model_dir <- Sys.getenv("RDEPLOY_MODEL_DIR", "/opt/ml/model")
port <- env_int("RDEPLOY_INTERNAL_PORT", 8081)
max_body <- env_int("RDEPLOY_MAX_BODY", 6291456)

log_line <- function(...) cat(format(Sys.time(), "%Y-%m-%dT%H:%M:%OS3Z", tz = "UTC"), " ", ..., "\n", sep = "")

log_line("loading model from ", model_dir)
started <- Sys.time()
bundle <- tryCatch(rd_load_model(model_dir), error = function(e) {
  cat("rdeploy: cannot serve: ", conditionMessage(e), "\n", sep = "", file = stderr())
  quit(status = 1, save = "no")
})
log_line(sprintf(
  "model loaded in %.1f s (class %s; packages: %s)", as.numeric(Sys.time() - started, units = "secs"),
  class(bundle$model)[1], paste(c(bundle$packages, "none")[1], collapse = ", ")
))

# Rserve calls this in the connection's child for every request. headers is
# the raw header block, starting with "Request-Method: <METHOD>"; it is
# parsed once here. HAProxy logs every request, so nothing is logged here.
.http.request <- function(url, query, body, headers) {
  headers <- rd_parse_headers(if (is.null(headers)) "" else rawToChar(headers))
  method <- rd_header_value(headers, "request-method")
  if (!nzchar(method)) method <- "GET"
  res <- rd_handle_request(bundle, method, url, body, headers, max_body)
  if (res$status >= 500L) log_line(method, " ", url, " ", res$status, ": ", res$body)
  list(res$body, res$content_type, character(0), res$status)
}

# Warm up in the parent: byte-compile this file's functions and run each code
# path once (lazy-loading the model package's predict code too). Every child
# inherits the result; otherwise each new connection would pay ~100 ms of
# compiling and loading on its first request.
for (name in ls(globalenv(), all.names = TRUE)) {
  f <- get(name, envir = globalenv())
  if (is.function(f)) assign(name, compiler::cmpfun(f), envir = globalenv())
}
warm_up <- function(path, body, headers) {
  invisible(rd_handle_request(bundle, "POST", path, charToRaw(body), headers, max_body))
}
warm_up("/ping", "", "")
warm_up("/invocations", "x", "Content-Type: text/plain\n")
warm_up("/invocations", "{", "Content-Type: application/json\n")
if (!is.null(bundle$schema)) {
  example <- rd_format_csv(rd_example_data(bundle$schema))
  warm_up("/invocations", example, "Content-Type: text/csv\nAccept: application/json\n")
  warm_up("/invocations", example, "Content-Type: text/csv\nAccept: text/csv\n")
  records <- jsonlite::toJSON(rd_example_data(bundle$schema), dataframe = "rows", factor = "string", digits = NA)
  warm_up("/invocations", as.character(records), "Content-Type: application/json\n")
}
# Collect garbage once here, so children do not each start with a collection
# (a full GC in a child writes to every page and defeats copy-on-write).
invisible(gc())

log_line("serving on 127.0.0.1:", port)
# Loopback only ("remote disable"): HAProxy is the only client.
Rserve::run.Rserve(http.port = port, qap = FALSE, http.raw.body = TRUE, remote = "disable")
