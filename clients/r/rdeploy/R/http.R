# One place that speaks HTTP: every call goes through rd_call(), and every answer of 400 or
# more becomes an R condition of class rdeploy_http_<status> and rdeploy_api_error.

rd_request <- function(conn, method, path) {
  req <- httr2::request(paste0(conn$url, "/api/v1/", path))
  req <- httr2::req_method(req, method)
  req <- httr2::req_headers(req, Authorization = paste("Token", conn$secret$token), Accept = "application/json")
  req <- httr2::req_user_agent(req, "rdeploy R client")
  # Answers of 400 and more are read here, not raised by httr2 (its message names httr2).
  httr2::req_error(req, is_error = function(resp) FALSE)
}

rd_perform <- function(req, conn) {
  resp <- tryCatch(httr2::req_perform(req), error = function(e) {
    rd_condition(
      paste0("Cannot reach the rdeploy server at ", conn$url, ": ", conditionMessage(e)),
      "rdeploy_connection_error"
    )
  })
  status <- httr2::resp_status(resp)
  if (status >= 400) rd_api_error(resp)
  resp
}

rd_call <- function(method, path, conn, json = NULL, query = NULL, multipart = NULL, progress = NULL) {
  req <- rd_request(conn, method, path)
  if (length(query)) req <- do.call(httr2::req_url_query, c(list(req), query))
  if (!is.null(json)) req <- httr2::req_body_json(req, json, auto_unbox = TRUE, digits = NA)
  if (!is.null(multipart)) req <- do.call(httr2::req_body_multipart, c(list(req), multipart))
  if (!is.null(progress)) req <- httr2::req_options(req, noprogress = FALSE, xferinfofunction = progress)
  resp <- rd_perform(req, conn)
  if (httr2::resp_status(resp) == 204 || !length(httr2::resp_body_raw(resp))) return(invisible(NULL))
  jsonlite::fromJSON(httr2::resp_body_string(resp, encoding = "UTF-8"), simplifyVector = FALSE)
}

# Every page of a paginated list, as one list of rows.
rd_list <- function(path, conn, query = NULL) {
  rows <- list()
  page <- 1
  repeat {
    answer <- rd_call("GET", path, conn, query = c(query, list(page = page)))
    rows <- c(rows, answer$results)
    if (is.null(answer$`next`)) return(rows)
    page <- page + 1
  }
}

rd_condition <- function(message, class, ...) {
  stop(structure(
    class = c(class, "rdeploy_error", "error", "condition"),
    list(message = message, call = NULL, ...)
  ))
}

# The API's own words: {"detail": ...}, {"message": ...} or DRF's field errors.
rd_error_message <- function(body) {
  if (!is.list(body)) return(NULL)
  for (key in c("detail", "message")) {
    if (is.character(body[[key]])) return(body[[key]][[1]])
  }
  fields <- vapply(names(body), function(field) {
    paste0(field, ": ", paste(unlist(body[[field]]), collapse = " "))
  }, character(1))
  if (length(fields)) paste(fields, collapse = "; ") else NULL
}

rd_api_error <- function(resp) {
  status <- httr2::resp_status(resp)
  text <- tryCatch(httr2::resp_body_string(resp, encoding = "UTF-8"), error = function(e) "")
  body <- tryCatch(jsonlite::fromJSON(text, simplifyVector = FALSE), error = function(e) NULL)
  detail <- rd_error_message(body)
  if (is.null(detail)) detail <- if (nzchar(text)) substr(text, 1, 500) else httr2::resp_status_desc(resp)
  rd_condition(
    paste0("rdeploy API error ", status, ": ", detail),
    c(paste0("rdeploy_http_", status), "rdeploy_api_error"),
    status = status, detail = detail, body = body
  )
}

# NULL for missing JSON values, so data frames get NA.
rd_value <- function(x, default = NA) if (is.null(x)) default else x
