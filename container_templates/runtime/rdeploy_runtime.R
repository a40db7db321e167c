# rdeploy serving runtime: everything between "bytes of an HTTP request" and
# "bytes of an HTTP response" for a fitted R model. Written in plain base R
# (plus jsonlite) so the server (rdeploy_server.R) and the model-inspection
# script can both source() this file and call the same functions.
#
# ---------------------------------------------------------------------------
# Public API (every function is pure R, no global state; errors are raised as
# conditions of class "rdeploy_error" plus one of the classes below)
#
#   rd_load_model(model_dir)
#       Loads a model directory (model.rds, optional predict.R and
#       rdeploy.json, see README.md). Attaches the packages the model needs,
#       runs predict.R's load_fn(model_dir) if defined, else readRDS().
#       Returns a "bundle": list(model, hooks, schema, packages, config, plan),
#       where hooks is a list of the predict.R functions found (load_fn,
#       input_fn, predict_fn, output_fn; absent ones are NULL), schema is the
#       input schema (see rd_schema_from_model) or NULL, config is the parsed
#       rdeploy.json (or list()), plan what every request needs from schema and
#       model, worked out once (rd_schema_plan plus the default predictor;
#       recompute it after changing schema or model). Raises rdeploy_load_error.
#
#   rd_infer_packages(model)
#       Character vector of the packages needed to predict with `model`: the
#       package providing a predict method for one of its classes (never
#       "base"/"stats" etc., which are always attached). May be empty.
#
#   rd_attach_packages(packages)
#       library()s each package quietly. Raises rdeploy_load_error naming the
#       packages that are not installed.
#
#   rd_schema_from_model(model)
#       The input schema a model was fitted on, as far as the model records it:
#       list(columns = list(list(name, type, levels?), ...)) with type one of
#       "numeric", "integer", "logical", "character", "factor", "ordered",
#       "Date". NULL when the model does not record its inputs.
#
#   rd_schema_from_data(df)
#       The same structure built from a prototype data frame.
#
#   rd_example_data(schema)
#       A one-row data.frame fitting the schema (1 for numbers, first level
#       for factors), e.g. to try a model's predict() once.
#
#   rd_parse_input(body, content_type, schema = NULL, plan = rd_schema_plan(schema))
#       body: character(1) or raw; content_type: the request's Content-Type
#       (parameters such as "; charset=utf-8" are ignored). Parses CSV
#       (header row optional when a schema is given) or JSON (records,
#       {"instances": ...} or columns) and coerces every column to the schema.
#       Returns a data.frame. Raises rdeploy_bad_input (400) for malformed
#       input, missing columns (named) or values that do not fit the schema;
#       rdeploy_unsupported_type (415) for other content types.
#
#   rd_predict(model, data, type = NULL, predictor = rd_default_predictor(model))
#       Predicts with vetiver's conventions: numbers for regression, the
#       response scale for glm, class labels for classifiers, ranger's
#       $predictions unwrapped; type = "prob" gives class probabilities
#       (a data.frame, one column per class). Returns an atomic vector or a
#       data.frame with nrow(data) rows. Raises rdeploy_predict_error (500),
#       or rdeploy_bad_input (400) when "prob" is impossible for the model.
#
#   rd_format_output(pred, accept = "application/json")
#       Returns list(body = character(1), content_type = character(1)):
#       {"predictions": [...]} for JSON (probabilities as one object per row),
#       one prediction per line for text/csv (probabilities with a header).
#       Raises rdeploy_not_acceptable (406) for other Accept values.
#
#   rd_handle_request(bundle, method, path, body, headers, max_body = 6291456)
#       The whole HTTP exchange for the server: body is raw (or NULL), headers
#       the raw header block as one string ("Name: value" lines) or parsed by
#       rd_parse_headers(). Returns list(status, body, content_type); errors
#       become {"error": "..."}. rd_invocation(bundle, body, headers) is its
#       POST /invocations part, errors raised.
#
#   rd_parse_headers(headers) -> header values named by lower-cased names.
#
#   rd_status_for(condition) -> HTTP status for a condition:
#       rdeploy_bad_input 400, rdeploy_too_large 413, rdeploy_unsupported_type
#       415, rdeploy_not_acceptable 406, anything else 500.
# ---------------------------------------------------------------------------

rd_error <- function(class, ...) {
  stop(structure(
    class = c(class, "rdeploy_error", "error", "condition"),
    list(message = paste0(...), call = NULL)
  ))
}

rd_status_for <- function(condition) {
  if (inherits(condition, "rdeploy_bad_input")) return(400L)
  if (inherits(condition, "rdeploy_not_acceptable")) return(406L)
  if (inherits(condition, "rdeploy_too_large")) return(413L)
  if (inherits(condition, "rdeploy_unsupported_type")) return(415L)
  500L
}

# ---- Packages ---------------------------------------------------------------

# Packages every R session has attached; never worth listing.
rd_base_packages <- c("base", "stats", "utils", "methods", "graphics", "grDevices", "datasets")

# Classes whose predict method lives in a package other than the class name.
# Checked before searching installed NAMESPACE files, which is slow.
rd_known_classes <- c(
  randomForest = "randomForest", ranger = "ranger", rpart = "rpart",
  svm = "e1071", naiveBayes = "e1071", glmnet = "glmnet", cv.glmnet = "glmnet",
  lda = "MASS", qda = "MASS", polr = "MASS", rlm = "MASS", nnet = "nnet",
  multinom = "nnet", gam = "mgcv", earth = "earth", train = "caret",
  knn3 = "caret", xgb.Booster = "xgboost", gbm = "gbm", C5.0 = "C50",
  ksvm = "kernlab", workflow = "workflows", model_fit = "parsnip",
  coxph = "survival", survreg = "survival", lm = "stats", glm = "stats",
  nls = "stats", loess = "stats"
)

rd_infer_packages <- function(model) {
  classes <- class(model)
  # S4 classes record their package.
  s4_package <- attr(classes, "package")
  if (!is.null(s4_package)) return(setdiff(s4_package, rd_base_packages))
  for (cls in classes) {
    if (cls %in% names(rd_known_classes)) {
      return(setdiff(unname(rd_known_classes[cls]), rd_base_packages))
    }
  }
  # Unknown class: find the installed package registering predict.<class>.
  for (cls in classes) {
    pattern <- sprintf("^\\s*S3method\\(\\s*\"?predict\"?\\s*,\\s*\"?%s\"?\\s*[,)]", gsub(".", "\\.", cls, fixed = TRUE))
    for (lib in .libPaths()) {
      for (pkg in list.files(lib)) {
        ns <- file.path(lib, pkg, "NAMESPACE")
        if (file.exists(ns) && any(grepl(pattern, readLines(ns, warn = FALSE)))) {
          return(setdiff(pkg, rd_base_packages))
        }
      }
    }
  }
  character(0)
}

rd_attach_packages <- function(packages) {
  packages <- setdiff(unique(packages), rd_base_packages)
  missing <- packages[!vapply(packages, requireNamespace, logical(1), quietly = TRUE)]
  if (length(missing)) {
    rd_error("rdeploy_load_error", "R packages not installed in this image: ", paste(missing, collapse = ", "))
  }
  for (p in packages) suppressPackageStartupMessages(library(p, character.only = TRUE))
  invisible(packages)
}

# ---- Schema -----------------------------------------------------------------

rd_column_type <- function(x) {
  if (is.ordered(x)) return("ordered")
  if (is.factor(x)) return("factor")
  if (inherits(x, "Date")) return("Date")
  if (is.logical(x)) return("logical")
  if (is.integer(x)) return("integer")
  if (is.numeric(x)) return("numeric")
  "character"
}

rd_schema_from_data <- function(df) {
  columns <- lapply(names(df), function(name) {
    column <- list(name = name, type = rd_column_type(df[[name]]))
    if (is.factor(df[[name]])) column$levels <- levels(df[[name]])
    column
  })
  list(columns = columns)
}

# One row that fits a schema (1 for numbers, the first level of factors):
# enough to exercise a model's predict code, e.g. to warm a server up.
rd_example_data <- function(schema) {
  columns <- lapply(schema$columns, function(column) {
    value <- switch(column$type,
      numeric = 1, integer = 1L, logical = FALSE, Date = Sys.Date(), character = "",
      factor = , ordered = if (length(column$levels)) unlist(column$levels)[1] else "a"
    )
    rd_coerce_column(value, column)
  })
  names(columns) <- rd_schema_names(schema)
  structure(columns, class = "data.frame", row.names = c(NA, -1L))
}

# Maps model.frame's dataClasses ("numeric", "factor", "ordered", "logical",
# "character", "nmatrix.2", "other") to schema types.
rd_type_from_data_class <- function(data_class) {
  if (data_class %in% c("factor", "ordered", "logical", "character")) return(data_class)
  "numeric"
}

rd_schema_from_model <- function(model) {
  if (inherits(model, "ranger")) {
    names <- model$forest$independent.variable.names
    if (is.null(names)) return(NULL)
    levels <- model$forest$covariate.levels
    columns <- lapply(names, function(name) {
      lv <- levels[[name]]
      if (is.null(lv)) list(name = name, type = "numeric") else list(name = name, type = "factor", levels = lv)
    })
    return(list(columns = columns))
  }
  terms <- tryCatch(stats::terms(model), error = function(e) NULL)
  if (is.null(terms)) return(NULL)
  all_vars <- all.vars(stats::delete.response(terms))
  if ("." %in% all_vars || !length(all_vars)) return(NULL)
  data_classes <- attr(terms, "dataClasses")
  xlevels <- model$xlevels
  if (is.null(xlevels)) xlevels <- attr(model, "xlevels")
  if (is.null(xlevels) && inherits(model, "randomForest")) xlevels <- model$forest$xlevels
  if (is.null(xlevels) && inherits(model, "svm")) xlevels <- model$xlevels
  columns <- lapply(all_vars, function(name) {
    data_class <- if (!is.null(data_classes) && name %in% names(data_classes)) data_classes[[name]] else "numeric"
    type <- rd_type_from_data_class(data_class)
    column <- list(name = name, type = type)
    lv <- xlevels[[name]]
    if (type %in% c("factor", "ordered") && is.character(lv)) column$levels <- lv
    column
  })
  list(columns = columns)
}

# ---- Input ------------------------------------------------------------------

# Perl regexes throughout: base R's trimws() and default regexes cost tens of
# microseconds each, which adds up against a half-millisecond predict().
rd_trim <- function(x) {
  if (!any(grepl(" ", x, fixed = TRUE)) && !any(grepl("\t", x, fixed = TRUE))) return(x)
  gsub("^\\s+|\\s+$", "", x, perl = TRUE)
}

rd_media_type <- function(content_type) {
  if (is.null(content_type) || !length(content_type)) return("")
  if (length(content_type) == 1 && content_type %in% c("text/csv", "application/json")) return(content_type)
  tolower(sub("^\\s*([^;\\s]*).*$", "\\1", content_type, perl = TRUE))
}

rd_schema_names <- function(schema) vapply(schema$columns, function(c) c$name, character(1))

# What parsing a request needs from a schema, worked out once per model
# (rd_load_model stores it as bundle$plan) instead of on every request.
rd_schema_plan <- function(schema) {
  if (is.null(schema)) return(list())
  names <- rd_schema_names(schema)
  types <- vapply(schema$columns, function(c) c$type, character(1))
  with_levels <- vapply(schema$columns, function(c) length(c$levels) > 0, logical(1))
  list(
    names = names,
    csv_header = paste(names, collapse = ","),
    csv_header_quoted = paste0("\"", names, "\"", collapse = ","),
    columns = schema$columns,
    # rd_read_simple_csv handles these schemas: numbers and factors with known
    # levels, under names that need no quoting or trimming in CSV.
    simple_csv = length(names) > 0 && !anyDuplicated(names) && all(nzchar(names)) &&
      !any(grepl("[\",\\s]", names, perl = TRUE)) &&
      all(types == "numeric" | (types %in% c("factor", "ordered") & with_levels)),
    all_numeric = all(types == "numeric")
  )
}

# The common case of CSV, without the general parser's cost (a tenth of it on
# one row): a header row exactly as the schema names it (or none), then rows
# of plain fields, no quotes, no whitespace, every field fitting its column.
# Returns the data.frame rd_parse_input() would return, or NULL for anything
# else, which then takes the general path (and gets its error messages).
rd_read_simple_csv <- function(text, plan) {
  if (!isTRUE(plan$simple_csv) || grepl("[ \t\r]", text, perl = TRUE)) return(NULL)
  lines <- strsplit(text, "\n", fixed = TRUE)[[1]]
  if (!all(nzchar(lines))) lines <- lines[nzchar(lines)]
  if (!length(lines)) return(NULL)
  first <- lines[1L]
  if (first == plan$csv_header || first == plan$csv_header_quoted) {
    lines <- lines[-1L]
    if (!length(lines)) return(NULL)
  } else if (any(strsplit(first, ",", fixed = TRUE)[[1]] %in% plan$names)) {
    return(NULL)
  }
  quoted <- grepl("\"", text, fixed = TRUE) && any(grepl("\"", lines, fixed = TRUE))
  if (quoted || any(endsWith(lines, ","))) return(NULL)
  fields <- strsplit(lines, ",", fixed = TRUE)
  k <- length(plan$names)
  n <- length(lines)
  if (any(lengths(fields) != k)) return(NULL)
  flat <- unlist(fields, use.names = FALSE)
  absent <- flat == "NA" | flat == ""
  if (any(absent)) flat[absent] <- NA_character_
  if (plan$all_numeric) {
    values <- suppressWarnings(as.numeric(flat))
    if (any(is.na(values) & !absent)) return(NULL)
    columns <- if (n == 1L) {
      as.list(values)
    } else {
      lapply(seq_len(k), function(j) values[seq.int(j, by = k, length.out = n)])
    }
  } else {
    # The general path's own coercion, column by column in schema order: the
    # same values and the same first error.
    columns <- lapply(seq_len(k), function(j) {
      rd_coerce_column(flat[seq.int(j, by = k, length.out = n)], plan$columns[[j]])
    })
  }
  names(columns) <- plan$names
  attr(columns, "row.names") <- c(NA_integer_, -n)
  class(columns) <- "data.frame"
  columns
}

# Splits CSV text into a list of character columns named by the header (or
# the schema). Simple unquoted CSV, the common case and the benchmark's, is
# split with strsplit; anything quoted goes through read.csv.
rd_read_csv <- function(text, schema) {
  if (grepl("\r", text, fixed = TRUE)) text <- gsub("\r", "", text, fixed = TRUE)
  lines <- strsplit(text, "\n", fixed = TRUE)[[1]]
  lines <- lines[nzchar(lines)]
  if (!length(lines)) rd_error("rdeploy_bad_input", "the CSV body has no rows")
  quoted <- grepl("\"", lines, fixed = TRUE)
  if (any(quoted[-1]) || length(lines) > 50) {
    # Quoted values or many rows: R's own parser (C code), as character columns.
    table <- tryCatch(
      utils::read.csv(text = lines, header = FALSE, colClasses = "character", na.strings = character(0), fill = FALSE),
      error = function(e) rd_error("rdeploy_bad_input", "malformed CSV: ", conditionMessage(e))
    )
    first <- unlist(table[1, ], use.names = FALSE)
    rows <- unname(as.list(table))
  } else {
    # A few unquoted rows (write.csv() still quotes the header): strsplit,
    # ten times faster than read.csv() on a single row.
    first <- strsplit(lines[1], ",", fixed = TRUE)[[1]]
    if (endsWith(lines[1], ",")) first <- c(first, "")
    if (quoted[1]) first <- sub('^"(.*)"$', "\\1", rd_trim(first))
    rows <- NULL
  }
  first <- rd_trim(first)
  # With a schema the header row is optional: a first row naming any schema
  # column is a header, anything else is data in schema order.
  has_header <- is.null(schema) || any(first %in% rd_schema_names(schema))
  header <- if (has_header) first else rd_schema_names(schema)
  if (anyDuplicated(header)) rd_error("rdeploy_bad_input", "duplicate CSV column: ", header[anyDuplicated(header)])
  data_lines <- if (has_header) lines[-1] else lines

  if (is.null(rows)) {
    fields <- strsplit(data_lines, ",", fixed = TRUE)
    # strsplit drops a trailing empty field ("1,2," -> 2 fields): put it back.
    trailing <- endsWith(data_lines, ",")
    if (any(trailing)) fields[trailing] <- lapply(fields[trailing], function(f) c(f, ""))
    widths <- lengths(fields)
    bad <- which(widths != length(header))
    if (length(bad)) {
      expected <- if (has_header) "one per header column" else paste(header, collapse = ", ")
      rd_error(
        "rdeploy_bad_input", "CSV row ", bad[1] + has_header, " has ", widths[bad[1]], " fields, expected ",
        length(header), " (", expected, ")"
      )
    }
    n <- length(fields)
    flat <- unlist(fields, use.names = FALSE)
    columns <- if (n == 1) as.list(flat) else lapply(seq_along(header), function(j) flat[seq.int(j, by = length(header), length.out = n)])
  } else {
    if (length(rows) != length(header)) {
      rd_error("rdeploy_bad_input", "CSV rows have ", length(rows), " fields, expected ", length(header))
    }
    columns <- if (has_header) lapply(rows, `[`, -1L) else rows
  }
  names(columns) <- header
  # An empty CSV field is a missing value.
  lapply(columns, function(x) {
    x <- rd_trim(x)
    x[x == "" | x == "NA"] <- NA_character_
    x
  })
}

# The common JSON bodies without jsonlite's simplification (a tenth of its
# cost on one record): records, {"instances": records} or columns whose
# values are all plain scalars (no nulls, no nesting), one type per column.
# Returns the columns rd_read_json() would return, or NULL for anything else,
# which then takes that general path (and gets its error messages).
rd_read_simple_json <- function(text) {
  parsed <- tryCatch(jsonlite::parse_json(text, simplifyVector = FALSE), error = function(e) NULL)
  if (!is.list(parsed) || !length(parsed)) return(NULL)
  if (identical(names(parsed), "instances")) parsed <- parsed[[1L]]
  if (!is.list(parsed) || !length(parsed)) return(NULL)
  keys <- names(parsed)
  if (is.null(keys)) {
    # Records: every one an object with the same keys in the same order.
    keys <- names(parsed[[1L]])
    same_keys <- vapply(parsed, function(r) is.list(r) && identical(names(r), keys), logical(1))
    if (is.null(keys) || !all(same_keys)) return(NULL)
    n <- length(parsed)
    by_row <- TRUE
  } else {
    # Columns ({"a": [1, 2]}) or one record ({"a": 1}).
    parsed <- lapply(parsed, function(x) if (is.list(x) && is.null(names(x))) x else list(x))
    n <- length(parsed[[1L]])
    if (!all(lengths(parsed) == n)) return(NULL)
    by_row <- FALSE
  }
  k <- length(keys)
  values <- unlist(parsed, recursive = FALSE, use.names = FALSE)
  if (!all(nzchar(keys)) || anyDuplicated(keys) || !length(values) || !all(lengths(values) == 1L)) return(NULL)
  kinds <- rd_json_kinds[vapply(values, typeof, character(1))]
  if (anyNA(kinds)) return(NULL)
  if (n == 1L) {
    columns <- values
  } else {
    at <- if (by_row) {
      function(j) seq.int(j, by = k, length.out = n)
    } else {
      function(j) seq.int((j - 1L) * n + 1L, length.out = n)
    }
    first <- vapply(seq_len(k), function(j) kinds[[at(j)[1L]]], character(1))
    if (by_row && !all(kinds == first)) return(NULL)
    if (!by_row && !all(kinds == rep(first, each = n))) return(NULL)
    columns <- lapply(seq_len(k), function(j) unlist(values[at(j)], use.names = FALSE))
  }
  names(columns) <- keys
  columns
}

# One type per column: what jsonlite's simplification keeps without coercing.
rd_json_kinds <- c(integer = "number", double = "number", character = "character", logical = "logical")

# Turns parsed JSON into a list of columns. Accepted shapes:
#   [{"a": 1, "b": "x"}, ...]          records
#   {"instances": [records or rows]}   SageMaker/TF-serving style
#   {"a": [1, 2], "b": ["x", "y"]}     columns (a single record also fits)
rd_read_json <- function(text, schema) {
  parsed <- tryCatch(
    jsonlite::fromJSON(text, simplifyVector = TRUE, simplifyDataFrame = TRUE, simplifyMatrix = TRUE),
    error = function(e) rd_error("rdeploy_bad_input", "malformed JSON: ", conditionMessage(e))
  )
  if (is.list(parsed) && !is.data.frame(parsed) && identical(names(parsed), "instances")) {
    parsed <- parsed$instances
  }
  if (is.data.frame(parsed)) return(as.list(parsed))
  # Rows without names ([[5.1, 3.5, ...], ...]) follow the schema's column order.
  if (is.matrix(parsed) || (is.atomic(parsed) && is.null(names(parsed)) && length(parsed))) {
    if (!is.matrix(parsed)) parsed <- matrix(parsed, nrow = 1)
    if (is.null(schema)) rd_error("rdeploy_bad_input", "rows without column names need an input schema (rdeploy.json)")
    names <- rd_schema_names(schema)
    if (ncol(parsed) != length(names)) {
      rd_error("rdeploy_bad_input", "each row needs ", length(names), " values (", paste(names, collapse = ", "), ")")
    }
    columns <- lapply(seq_along(names), function(j) parsed[, j])
    names(columns) <- names
    return(columns)
  }
  if (is.list(parsed) && !is.null(names(parsed)) && all(nzchar(names(parsed)))) {
    ok <- vapply(parsed, function(x) is.null(x) || is.atomic(x), logical(1))
    if (!all(ok)) rd_error("rdeploy_bad_input", "column '", names(parsed)[!ok][1], "' must be a list of plain values")
    columns <- lapply(parsed, function(x) if (is.null(x)) NA else x)
    if (length(unique(lengths(columns))) > 1) rd_error("rdeploy_bad_input", "columns have different lengths")
    return(columns)
  }
  if (is.list(parsed) && !length(parsed)) rd_error("rdeploy_bad_input", "the JSON body has no rows")
  rd_error("rdeploy_bad_input", "JSON must be a list of records, {\"instances\": [...]} or {\"column\": [values]}")
}

rd_coerce_column <- function(x, column) {
  name <- column$name
  type <- column$type
  if (type == "numeric") {
    if (is.numeric(x)) return(as.numeric(x))
    number <- suppressWarnings(as.numeric(x))
    if (anyNA(number)) rd_check_converted(x, number, name, "numbers")
    return(number)
  }
  if (type == "factor" || type == "ordered") {
    text <- as.character(x)
    levels <- unlist(column$levels)
    if (is.null(levels)) return(factor(text, ordered = type == "ordered"))
    # match() + class attribute: factor() with the same result costs 10x more.
    codes <- match(text, levels)
    unknown <- is.na(codes) & !is.na(text)
    if (any(unknown)) {
      rd_error(
        "rdeploy_bad_input", "column '", name, "' has unknown level '", text[unknown][1],
        "' (expected one of: ", paste(levels, collapse = ", "), ")"
      )
    }
    attr(codes, "levels") <- levels
    class(codes) <- if (type == "ordered") c("ordered", "factor") else "factor"
    return(codes)
  }
  if (type == "integer") {
    number <- if (is.numeric(x)) x else suppressWarnings(as.numeric(x))
    if (anyNA(number)) rd_check_converted(x, number, name, "whole numbers")
    if (any(number != round(number), na.rm = TRUE)) rd_error("rdeploy_bad_input", "column '", name, "' expects whole numbers")
    return(as.integer(number))
  }
  if (type == "logical") {
    if (is.logical(x)) return(x)
    text <- toupper(as.character(x))
    value <- ifelse(text %in% c("TRUE", "T", "1"), TRUE, ifelse(text %in% c("FALSE", "F", "0"), FALSE, NA))
    rd_check_converted(x, value, name, "TRUE or FALSE")
    return(value)
  }
  if (type == "Date") {
    value <- as.Date(as.character(x), optional = TRUE)
    rd_check_converted(x, value, name, "dates (YYYY-MM-DD)")
    return(value)
  }
  if (type == "character") return(as.character(x))
  rd_error("rdeploy_load_error", "schema column '", name, "' has unknown type '", type, "'")
}

# A value that was present but became NA did not fit the column's type.
rd_check_converted <- function(x, converted, name, what) {
  failed <- is.na(converted) & !is.na(x)
  if (any(failed)) {
    rd_error("rdeploy_bad_input", "column '", name, "' expects ", what, ", got '", as.character(x[failed][1]), "'")
  }
}

rd_parse_input <- function(body, content_type, schema = NULL, plan = rd_schema_plan(schema)) {
  if (is.null(body)) body <- ""
  if (is.raw(body)) body <- rawToChar(body)
  if (!nzchar(body)) rd_error("rdeploy_bad_input", "the request body is empty")
  media_type <- rd_media_type(content_type)
  if (media_type == "text/csv" && !is.null(schema)) {
    simple <- rd_read_simple_csv(body, plan)
    if (!is.null(simple)) return(simple)
  }
  columns <- switch(media_type,
    "text/csv" = rd_read_csv(body, schema),
    "application/json" = {
      simple <- rd_read_simple_json(body)
      if (is.null(simple)) rd_read_json(body, schema) else simple
    },
    rd_error(
      "rdeploy_unsupported_type", "unsupported Content-Type '", content_type,
      "': send text/csv or application/json"
    )
  )
  n <- if (length(columns)) length(columns[[1]]) else 0L
  if (is.null(schema)) {
    # Without a schema, strings that look like numbers become numbers.
    columns <- lapply(columns, function(x) if (is.character(x)) utils::type.convert(x, as.is = TRUE) else x)
  } else {
    names <- plan$names
    missing <- names[!(names %in% names(columns))]
    if (length(missing)) rd_error("rdeploy_bad_input", "missing columns: ", paste(missing, collapse = ", "))
    # Schema columns first, in schema order, coerced; extra columns pass through
    # untouched for predict.R code that wants them.
    coerced <- lapply(schema$columns, function(column) rd_coerce_column(columns[[column$name]], column))
    names(coerced) <- names
    extra <- !(names(columns) %in% names)
    columns <- if (any(extra)) c(coerced, columns[extra]) else coerced
  }
  # Attributes set by hand instead of data.frame(): a tenth of the time, which
  # matters when a single-row prediction takes half a millisecond.
  attr(columns, "row.names") <- c(NA_integer_, -as.integer(n))
  class(columns) <- "data.frame"
  columns
}

# ---- Prediction -------------------------------------------------------------

rd_as_prob_frame <- function(p) {
  p <- as.data.frame(unclass(p), optional = TRUE, stringsAsFactors = FALSE)
  rownames(p) <- NULL
  p
}

rd_predict_prob <- function(model, data) {
  if (inherits(model, "ranger")) {
    if (!identical(model$treetype, "Probability estimation")) {
      rd_error("rdeploy_bad_input", "type=prob needs a ranger model trained with probability = TRUE")
    }
    return(rd_as_prob_frame(stats::predict(model, data = data)$predictions))
  }
  if (inherits(model, "glm") && identical(model$family$family, "binomial")) {
    p <- stats::predict(model, newdata = data, type = "response")
    levels <- levels(model.frame(model)[[1]])
    if (is.null(levels)) levels <- c("0", "1")
    return(structure(list(1 - unname(p), unname(p)), names = levels, class = "data.frame", row.names = c(NA, -length(p))))
  }
  if (inherits(model, "svm")) {
    if (!isTRUE(model$compprob)) rd_error("rdeploy_bad_input", "type=prob needs an svm trained with probability = TRUE")
    return(rd_as_prob_frame(attr(stats::predict(model, data, probability = TRUE), "probabilities")))
  }
  if (inherits(model, "rpart") && !identical(model$method, "class")) {
    rd_error("rdeploy_bad_input", "type=prob needs a classification model")
  }
  p <- tryCatch(stats::predict(model, data, type = "prob"), error = function(e) {
    rd_error("rdeploy_bad_input", "this model cannot predict probabilities: ", conditionMessage(e))
  })
  if (!is.matrix(p) && !is.data.frame(p)) rd_error("rdeploy_bad_input", "this model cannot predict probabilities")
  rd_as_prob_frame(p)
}

# vetiver's conventions: what an R user would get from predict() for the
# model, made into a plain vector. The predict call depends on the model's
# class only, so it is chosen once per model (bundle$plan$predictor).
rd_default_predictor <- function(model) {
  if (inherits(model, "ranger")) {
    return(function(model, data) {
      p <- stats::predict(model, data = data)$predictions
      # A probability forest answers with probabilities even by default.
      if (is.matrix(p)) rd_as_prob_frame(p) else p
    })
  }
  if (inherits(model, "glm")) return(function(model, data) stats::predict(model, newdata = data, type = "response"))
  if (inherits(model, "rpart")) {
    type <- if (identical(model$method, "class")) "class" else "vector"
    return(function(model, data) stats::predict(model, newdata = data, type = type))
  }
  if (inherits(model, "randomForest")) {
    return(function(model, data) stats::predict(model, newdata = data, type = "response"))
  }
  function(model, data) stats::predict(model, data)
}

rd_simplify_prediction <- function(p) {
  if (is.list(p) && !is.data.frame(p) && !is.null(p$predictions)) p <- p$predictions
  if (is.data.frame(p)) return(if (ncol(p) == 1) rd_simplify_prediction(p[[1]]) else p)
  if (is.matrix(p)) return(if (ncol(p) == 1) unname(p[, 1]) else rd_as_prob_frame(p))
  if (is.factor(p)) return(as.character(p))
  attributes(p) <- NULL
  p
}

rd_predict <- function(model, data, type = NULL, predictor = rd_default_predictor(model)) {
  # Calling handlers, not tryCatch(): they cost nothing until a condition is
  # signalled, and an error handler that raises its own error unwinds just the same.
  withCallingHandlers(
    rd_simplify_prediction(if (identical(type, "prob")) rd_predict_prob(model, data) else predictor(model, data)),
    error = function(e) {
      if (!inherits(e, "rdeploy_error")) {
        rd_error("rdeploy_predict_error", "the model's predict() failed: ", conditionMessage(e))
      }
    },
    # Warnings (e.g. "prediction from rank-deficient fit") must not abort a
    # prediction the user would have got in an R session.
    warning = function(w) invokeRestart("muffleWarning")
  )
}

# ---- Output -----------------------------------------------------------------

rd_json_escape <- function(x) {
  needs <- grepl("[\"\\\\[:cntrl:]]", x)
  out <- paste0("\"", x, "\"")
  if (any(needs, na.rm = TRUE)) {
    idx <- which(needs)
    out[idx] <- vapply(x[idx], function(s) as.character(jsonlite::toJSON(s, auto_unbox = TRUE)), character(1))
  }
  out[is.na(x)] <- "null"
  out
}

# Numbers with 15 significant digits, R's own as.character() precision, so a
# client sees what predict() returned; NA/NaN/Inf become null (JSON has none).
rd_json_values <- function(x) {
  if (is.character(x)) return(rd_json_escape(x))
  if (is.logical(x)) return(ifelse(is.na(x), "null", ifelse(x, "true", "false")))
  out <- as.character(x)
  out[!is.finite(x)] <- "null"
  out
}

rd_format_json <- function(pred) {
  if (is.data.frame(pred)) {
    keys <- rd_json_escape(names(pred))
    cells <- mapply(function(key, col) paste0(key, ":", rd_json_values(col)), keys, pred, SIMPLIFY = FALSE, USE.NAMES = FALSE)
    rows <- paste0("{", do.call(paste, c(cells, sep = ",")), "}")
    if (!nrow(pred)) rows <- character(0)
    return(paste0("{\"predictions\":[", paste(rows, collapse = ","), "]}"))
  }
  paste0("{\"predictions\":[", paste(rd_json_values(pred), collapse = ","), "]}")
}

rd_csv_values <- function(x) {
  out <- as.character(x)
  if (is.character(x)) {
    quote <- grepl("[\",\n\r]", x)
    out[quote & !is.na(x)] <- paste0("\"", gsub("\"", "\"\"", x[quote & !is.na(x)], fixed = TRUE), "\"")
  }
  out[is.na(x)] <- ""
  out
}

rd_format_csv <- function(pred) {
  if (is.data.frame(pred)) {
    header <- paste(rd_csv_values(names(pred)), collapse = ",")
    rows <- if (nrow(pred)) do.call(paste, c(lapply(pred, rd_csv_values), sep = ",")) else character(0)
    return(paste0(paste(c(header, rows), collapse = "\n"), "\n"))
  }
  if (!length(pred)) return("")
  paste0(paste(rd_csv_values(pred), collapse = "\n"), "\n")
}

# Picks the first media type of Accept that we produce; JSON when the client
# takes anything.
rd_output_type <- function(accept) {
  if (is.null(accept) || accept %in% c("", "*/*", "application/json")) return("application/json")
  if (accept == "text/csv") return("text/csv")
  for (candidate in rd_media_type(strsplit(accept, ",", fixed = TRUE)[[1]])) {
    if (candidate %in% c("application/json", "*/*", "application/*")) return("application/json")
    if (candidate %in% c("text/csv", "text/*")) return("text/csv")
  }
  rd_error("rdeploy_not_acceptable", "unsupported Accept '", accept, "': ask for application/json or text/csv")
}

rd_format_output <- function(pred, accept = "application/json") {
  type <- rd_output_type(accept)
  body <- if (type == "text/csv") rd_format_csv(pred) else rd_format_json(pred)
  list(body = body, content_type = type)
}

# ---- Model directory --------------------------------------------------------

rd_hook_names <- c("load_fn", "input_fn", "predict_fn", "output_fn")

rd_load_model <- function(model_dir) {
  config_path <- file.path(model_dir, "rdeploy.json")
  config <- if (file.exists(config_path)) {
    tryCatch(
      jsonlite::fromJSON(config_path, simplifyVector = FALSE),
      error = function(e) rd_error("rdeploy_load_error", "rdeploy.json is not valid JSON: ", conditionMessage(e))
    )
  } else {
    list()
  }
  # packages: ["randomForest", ...] or [{"name": "randomForest", "version": "4.7-1.1"}, ...]
  packages <- vapply(config$packages, function(p) if (is.list(p)) p$name else p, character(1))
  rd_attach_packages(packages)

  hooks <- list()
  script <- file.path(model_dir, "predict.R")
  if (file.exists(script)) {
    env <- new.env(parent = globalenv())
    tryCatch(sys.source(script, envir = env), error = function(e) {
      rd_error("rdeploy_load_error", "predict.R failed: ", conditionMessage(e))
    })
    for (name in rd_hook_names) if (exists(name, envir = env, inherits = FALSE)) hooks[[name]] <- get(name, envir = env)
  }

  model <- tryCatch(
    if (!is.null(hooks$load_fn)) hooks$load_fn(model_dir) else readRDS(file.path(model_dir, "model.rds")),
    error = function(e) rd_error("rdeploy_load_error", "could not load the model: ", conditionMessage(e))
  )
  if (is.null(config$packages)) {
    # No inspection record: attach what the model's class says it needs.
    packages <- rd_infer_packages(model)
    rd_attach_packages(packages)
  }
  # The schema comes from rdeploy.json; without it, from the model itself,
  # unless predict.R takes over input or prediction (its inputs then need not
  # be the model's).
  schema <- config$schema
  if (is.null(schema) && is.null(hooks$input_fn) && is.null(hooks$predict_fn)) schema <- rd_schema_from_model(model)
  plan <- c(rd_schema_plan(schema), list(predictor = rd_default_predictor(model)))
  list(model = model, hooks = hooks, schema = schema, packages = packages, config = config, plan = plan)
}

# ---- HTTP -------------------------------------------------------------------

# A raw header block ("Name: value" lines, as Rserve passes them) as a
# character vector of values named by the lower-cased header names; a name
# given twice keeps its first value. Parsed once per request: every lookup is
# then a name match (rd_header_value). A vector parsed already is returned.
rd_parse_headers <- function(headers) {
  if (!is.null(names(headers))) return(headers)
  lines <- strsplit(headers, "\n", fixed = TRUE)[[1]]
  colon <- regexpr(":", lines, fixed = TRUE)
  if (any(colon < 1L)) {
    lines <- lines[colon > 0L]
    colon <- colon[colon > 0L]
  }
  values <- substring(lines, colon + 1L)
  # Usually "Name: value": drop that one space without a regex.
  if (all(startsWith(values, " "))) values <- substring(values, 2L)
  padded <- startsWith(values, " ") | startsWith(values, "\t") | endsWith(values, " ") | endsWith(values, "\t") |
    endsWith(values, "\r")
  if (any(padded)) values <- gsub("^\\s+|\\s+$", "", values, perl = TRUE)
  names(values) <- tolower(substr(lines, 1L, colon - 1L))
  values
}

# The value of one header ("" when absent) from rd_parse_headers() output.
rd_header_value <- function(headers, name) {
  value <- headers[name][[1]]
  if (is.na(value)) "" else value
}

# "type=prob" from X-Amzn-SageMaker-Custom-Attributes ("k=v; k2=v2").
rd_custom_attribute <- function(attributes, key) {
  if (!nzchar(attributes)) return(NULL)
  pairs <- strsplit(strsplit(attributes, "[;,]")[[1]], "=", fixed = TRUE)
  for (pair in pairs) if (length(pair) == 2 && rd_trim(pair[1]) == key) return(rd_trim(pair[2]))
  NULL
}

rd_json_error <- function(status, message) {
  list(status = status, body = paste0("{\"error\":", rd_json_escape(message), "}"), content_type = "application/json")
}

rd_invocation <- function(bundle, body, headers) {
  headers <- rd_parse_headers(headers)
  content_type <- rd_header_value(headers, "content-type")
  accept <- rd_header_value(headers, "accept")
  hooks <- bundle$hooks
  plan <- bundle$plan
  if (is.null(plan)) plan <- c(rd_schema_plan(bundle$schema), list(predictor = rd_default_predictor(bundle$model)))
  type <- rd_custom_attribute(rd_header_value(headers, "x-amzn-sagemaker-custom-attributes"), "type")
  # Check Accept first: no point predicting for an answer we cannot send.
  output_type <- if (is.null(hooks$output_fn)) rd_output_type(accept) else if (nzchar(accept)) accept else "application/json"
  data <- if (is.null(hooks$input_fn)) {
    rd_parse_input(body, content_type, bundle$schema, plan)
  } else {
    tryCatch(hooks$input_fn(rawToChar(body), content_type), rdeploy_error = function(e) stop(e), error = function(e) {
      rd_error("rdeploy_bad_input", "input_fn rejected the request: ", conditionMessage(e))
    })
  }
  pred <- if (is.null(hooks$predict_fn)) {
    rd_predict(bundle$model, data, type, plan$predictor)
  } else {
    tryCatch(hooks$predict_fn(bundle$model, data), rdeploy_error = function(e) stop(e), error = function(e) {
      rd_error("rdeploy_predict_error", "predict_fn failed: ", conditionMessage(e))
    })
  }
  if (is.null(hooks$output_fn)) {
    # rd_predict() simplifies already; predict_fn's answer is whatever it returns.
    if (!is.null(hooks$predict_fn)) pred <- rd_simplify_prediction(pred)
    out <- rd_format_output(pred, output_type)
  } else {
    out <- hooks$output_fn(pred, output_type)
    if (!is.list(out)) out <- list(body = out, content_type = output_type)
  }
  list(status = 200L, body = out$body, content_type = out$content_type)
}

rd_handle_request <- function(bundle, method, path, body, headers, max_body = 6291456) {
  if (path == "/ping") {
    if (method %in% c("GET", "HEAD")) return(list(status = 200L, body = "", content_type = "text/plain"))
    return(rd_json_error(405L, "use GET /ping"))
  }
  if (path != "/invocations") return(rd_json_error(404L, paste0("no route ", path, ": use GET /ping or POST /invocations")))
  if (method != "POST") return(rd_json_error(405L, "use POST /invocations"))
  if (is.null(body)) body <- raw(0)
  if (length(body) > max_body) {
    return(rd_json_error(413L, sprintf("request body of %d bytes is above the limit of %d bytes", length(body), max_body)))
  }
  tryCatch(
    rd_invocation(bundle, body, headers),
    error = function(e) rd_json_error(rd_status_for(e), conditionMessage(e))
  )
}
