# The HTTP server behind `serve`: loads the model once, then serves it with
# Rserve's built-in HTTP server, which forks one child per connection from
# this fully loaded process (copy-on-write, so a child starts in about a
# millisecond with the model already in memory). See README.md for why.
runtime_dir <- Sys.getenv("RDEPLOY_RUNTIME_DIR")
source(file.path(runtime_dir, "rdeploy_runtime.R"))

env_int <- function(name, default) {
  value <- Sys.getenv(name, as.character(default))
  number <- suppressWarnings(as.integer(value))
  if (is.na(number) || number < 1) stop(name, " must be a positive integer, got '", value, "'", call. = FALSE)
  number
}

model_dir <- Sys.getenv("RDEPLOY_MODEL_DIR", "/opt/ml/model")
port <- env_int("SAGEMAKER_BIND_TO_PORT", 8080)
bind <- Sys.getenv("RDEPLOY_BIND", "0.0.0.0")
max_body <- env_int("RDEPLOY_MAX_BODY", 6291456)
max_workers <- env_int("RDEPLOY_MAX_WORKERS", parallel::detectCores())

log_line <- function(...) {
  # One write() per line so lines from concurrent children never interleave.
  cat(paste0(format(Sys.time(), "%Y-%m-%dT%H:%M:%OS3Z", tz = "UTC"), " ", ..., "\n"), sep = "")
}

# Until the model is loaded, a forked child holds the port and answers every
# request with 503, so SageMaker's pings see "not ready" rather than a refused
# connection. Base R's serverSocket() is enough for that trickle of requests.
unavailable_responder <- function(port) {
  server <- serverSocket(port)
  payload <- "{\"error\":\"the model is still loading\"}"
  response <- charToRaw(paste0(
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: ", nchar(payload),
    "\r\nConnection: close\r\n\r\n", payload
  ))
  repeat {
    con <- tryCatch(socketAccept(server, open = "r+b", timeout = 2), error = function(e) NULL)
    if (is.null(con)) next
    try({
      repeat {
        line <- readLines(con, n = 1, warn = FALSE)
        if (!length(line) || line == "" || line == "\r") break
      }
      writeBin(response, con)
    }, silent = TRUE)
    close(con)
  }
}
responder <- parallel::mcparallel(unavailable_responder(port), silent = FALSE)
stop_responder <- function() {
  tools::pskill(responder$pid, tools::SIGKILL)
  invisible(suppressWarnings(parallel::mccollect(responder, wait = TRUE)))
}

log_line("loading model from ", model_dir)
started <- Sys.time()
bundle <- tryCatch(rd_load_model(model_dir), error = function(e) {
  stop_responder()
  cat("rdeploy: cannot serve: ", conditionMessage(e), "\n", sep = "", file = stderr())
  quit(status = 1, save = "no")
})
log_line(sprintf(
  "model loaded in %.1f s (class %s; packages: %s); %d workers", as.numeric(Sys.time() - started, units = "secs"),
  class(bundle$model)[1], paste(c(bundle$packages, "none")[1], collapse = ", "), max_workers
))

# At most max_workers children parse and predict at once: each takes one of
# max_workers file locks. The kernel drops a lock when its holder dies, so a
# crashed child can never leak a slot. /ping takes no lock, so it is answered
# while every slot is busy.
slot_dir <- tempfile("rdeploy-slots-")
dir.create(slot_dir)
slots <- file.path(slot_dir, paste0("slot-", seq_len(max_workers)))
invisible(file.create(slots))
acquire_slot <- function() {
  start <- Sys.getpid() %% max_workers
  order <- (seq_len(max_workers) + start - 1L) %% max_workers + 1L
  repeat {
    for (i in order) {
      lock <- filelock::lock(slots[i], timeout = 0)
      if (!is.null(lock)) return(lock)
    }
    # All busy: wait on one slot (timeout in ms), then look at all again.
    lock <- filelock::lock(slots[order[1]], timeout = 100)
    if (!is.null(lock)) return(lock)
  }
}
release_slot <- function(lock) filelock::unlock(lock)

# Rserve calls this in the connection's child for every request. headers is
# the raw header block, starting with "Request-Method: <METHOD>".
.http.request <- function(url, query, body, headers) {
  started <- Sys.time()
  headers <- if (is.null(headers)) "" else rawToChar(headers)
  method <- if (startsWith(headers, "Request-Method: ")) {
    substr(headers, 17L, regexpr("\n", headers, fixed = TRUE) - 1L)
  } else {
    "GET"
  }
  res <- rd_handle_request(bundle, method, url, body, headers, max_body, acquire_slot, release_slot)
  log_line(method, " ", url, " ", res$status, " ", sprintf("%.2fms", 1000 * as.numeric(Sys.time() - started, units = "secs")))
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
warm_up <- function(method, path, body, headers) {
  invisible(rd_handle_request(bundle, method, path, charToRaw(body), headers, max_body, acquire_slot, release_slot))
}
warm_up("GET", "/ping", "", "")
warm_up("POST", "/invocations", "x", "Content-Type: text/plain\n")
warm_up("POST", "/invocations", "{", "Content-Type: application/json\n")
if (!is.null(bundle$schema)) {
  example <- rd_format_csv(rd_example_data(bundle$schema))
  warm_up("POST", "/invocations", example, "Content-Type: text/csv\nAccept: application/json\n")
  warm_up("POST", "/invocations", example, "Content-Type: text/csv\nAccept: text/csv\n")
}

stop_responder()
# Collect garbage once here, so children do not each start with a collection
# (a full GC in a child writes to every page and defeats copy-on-write).
invisible(gc())
log_line(sprintf("listening on %s:%d", bind, port))
# Rserve can listen on loopback only ("remote disable") or on every interface.
local_only <- bind %in% c("127.0.0.1", "localhost", "::1")
if (!local_only && bind != "0.0.0.0") log_line("RDEPLOY_BIND=", bind, " is served on every interface (Rserve binds all or loopback)")
Rserve::run.Rserve(
  http.port = port, qap = FALSE, http.raw.body = TRUE, remote = if (local_only) "disable" else "enable"
)
