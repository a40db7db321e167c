#' Predict with a live endpoint
#'
#' Sends `newdata` to the endpoint and returns its predictions as R values of the same
#' type as `predict(model, newdata)` in an R session: numbers for regression (the response
#' scale for a glm), a factor with the model's levels for a classifier, named by
#' `rownames(newdata)`. The model's prediction kind and classes come from rdeploy's
#' inspection of the version the endpoint serves.
#'
#' @param object An `rdeploy_endpoint`.
#' @param newdata A data frame with the model's input columns.
#' @param type `"response"` (the model's usual prediction) or `"prob"` (class
#'   probabilities: a matrix with one column per class).
#' @param ... Unused.
#' @return A vector (or, for `type = "prob"`, a matrix) with one element (row) per row of `newdata`.
#' @export
predict.rdeploy_endpoint <- function(object, newdata, type = c("response", "prob"), ...) {
  type <- match.arg(type)
  if (!is.data.frame(newdata)) stop("`newdata` must be a data frame.", call. = FALSE)
  req <- rd_request(object$conn, "POST", paste0("endpoints/", object$name, "/invocations"))
  req <- httr2::req_body_raw(req, charToRaw(enc2utf8(rd_records(newdata))), type = "application/json")
  if (type == "prob") req <- httr2::req_headers(req, `X-Amzn-SageMaker-Custom-Attributes` = "type=prob")
  resp <- rd_perform(req, object$conn)
  predictions <- jsonlite::fromJSON(httr2::resp_body_string(resp, encoding = "UTF-8"), simplifyVector = TRUE)$predictions
  prediction <- rd_prediction_kind(object)
  if (type == "prob") {
    predictions <- as.matrix(as.data.frame(predictions, check.names = FALSE))
    if (!is.null(prediction$classes)) predictions <- predictions[, unlist(prediction$classes), drop = FALSE]
    rownames(predictions) <- rownames(newdata)
    return(predictions)
  }
  if (is.data.frame(predictions)) return(predictions)
  if (identical(prediction$kind, "class")) {
    levels <- unlist(prediction$classes)
    predictions <- if (length(levels)) factor(predictions, levels = levels) else factor(predictions)
  }
  # ranger's predictions carry no names; every other model's predict() names them by row.
  if (length(predictions) == nrow(newdata) && !"ranger" %in% rd_model_class(object)) names(predictions) <- rownames(newdata)
  predictions
}

# The inspection of the serving version, fetched once per object.
rd_inspection <- function(endpoint) {
  cache <- endpoint$secret
  version <- endpoint$model$id
  if (is.null(version)) return(list())
  if (!identical(cache$inspection_of, version)) {
    cache$inspection <- rd_value(rd_call("GET", paste0("models/", version, "/"), endpoint$conn)$inspection, list())
    cache$inspection_of <- version
  }
  cache$inspection
}

# The inspection's prediction record: kind ("class", "numeric", ...) and classes.
rd_prediction_kind <- function(endpoint) rd_value(rd_inspection(endpoint)$prediction, list())

rd_model_class <- function(endpoint) unlist(rd_inspection(endpoint)$class)
