# The connection: the server's URL and the API token. The token lives in an environment
# so that print(), str() and saved workspaces of the connection never show it.

.state <- new.env(parent = emptyenv())

#' Connect to an rdeploy server
#'
#' Remembers the server and token for the other `rdeploy_*()` calls of this session.
#'
#' @param url The server's base URL, e.g. `"http://127.0.0.1:8000"`.
#' @param token An API token (the dashboard's "API tokens" page, or
#'   `manage.py create_api_token`). Never printed.
#' @return An `rdeploy_connection`, invisibly.
#' @export
rdeploy_connect <- function(url = Sys.getenv("RDEPLOY_URL"), token = Sys.getenv("RDEPLOY_TOKEN")) {
  if (!is.character(url) || length(url) != 1 || !nzchar(url)) {
    stop("rdeploy_connect() needs the server's URL (or RDEPLOY_URL).", call. = FALSE)
  }
  if (!is.character(token) || length(token) != 1 || !nzchar(token)) {
    stop("rdeploy_connect() needs an API token (or RDEPLOY_TOKEN).", call. = FALSE)
  }
  secret <- new.env(parent = emptyenv())
  secret$token <- token
  conn <- structure(list(url = sub("/+$", "", url), secret = secret), class = "rdeploy_connection")
  .state$connection <- conn
  invisible(conn)
}

#' The current connection
#'
#' @return The connection the last [rdeploy_connect()] made.
#' @export
rdeploy_connection <- function() {
  if (is.null(.state$connection)) {
    stop("Not connected: call rdeploy_connect(url, token) first.", call. = FALSE)
  }
  .state$connection
}

#' @export
print.rdeploy_connection <- function(x, ...) {
  cat("<rdeploy connection>\n  server: ", x$url, "\n  token:  <hidden>\n", sep = "")
  invisible(x)
}
