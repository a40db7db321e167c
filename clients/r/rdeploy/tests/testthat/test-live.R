# Against a live rdeploy: RDEPLOY_URL and RDEPLOY_TOKEN (skipped without them). The
# pytest driver clients/r/tests/test_r_client.py starts the stack and sets both.

skip_if_no_server <- function() {
  skip_if(!nzchar(Sys.getenv("RDEPLOY_URL")) || !nzchar(Sys.getenv("RDEPLOY_TOKEN")), "RDEPLOY_URL/RDEPLOY_TOKEN unset")
}

suffix <- function() Sys.getenv("RDEPLOY_TEST_SUFFIX", "r")

test_that("a wrong token is an rdeploy_http_401 condition with the API's message", {
  skip_if_no_server()
  conn <- rdeploy_connect(Sys.getenv("RDEPLOY_URL"), token = "rdp_not-a-token")
  err <- expect_error(rdeploy_models(conn = conn), class = "rdeploy_http_401")
  expect_s3_class(err, "rdeploy_api_error")
  expect_match(conditionMessage(err), "token", ignore.case = TRUE)
  expect_identical(err$status, 401L)
})

test_that("an object without a predict method is refused with the reason", {
  skip_if_no_server()
  rdeploy_connect(Sys.getenv("RDEPLOY_URL"), Sys.getenv("RDEPLOY_TOKEN"))
  not_a_model <- structure(list(weights = 1:3), class = "no_such_model_class")
  err <- expect_error(rdeploy_upload(not_a_model, paste0("not-a-model-", suffix())), class = "rdeploy_invalid_model")
  expect_match(conditionMessage(err), "not an R model|predict", ignore.case = TRUE)
})

test_that("lm and randomForest deploy, predict as locally, update, roll back and delete", {
  skip_if_no_server()
  rdeploy_connect(Sys.getenv("RDEPLOY_URL"), Sys.getenv("RDEPLOY_TOKEN"))
  name <- paste0("iris-", suffix())
  newdata <- iris[c(1, 51, 101, 150), ]

  linear <- lm(Sepal.Length ~ Sepal.Width + Petal.Length + Species, data = iris)
  first <- rdeploy_upload(linear, name)
  expect_s3_class(first, "rdeploy_model")
  expect_identical(first$status, "ready")

  endpoint <- rdeploy_deploy(first, name)
  expect_s3_class(endpoint, "rdeploy_endpoint")
  expect_identical(endpoint$status, "live")
  expect_equal(predict(endpoint, newdata), predict(linear, newdata))
  expect_true(name %in% rdeploy_endpoints()$name)
  expect_true(first$id %in% rdeploy_models(name = name)$id)

  set.seed(1)
  forest <- randomForest::randomForest(Species ~ ., data = iris, ntree = 20)
  updated <- rdeploy_deploy(forest, name)
  expect_identical(updated$model$version, 2L)
  local <- predict(forest, newdata)
  remote <- predict(updated, newdata)
  expect_identical(levels(remote), levels(iris$Species))
  expect_identical(remote, local)
  probabilities <- predict(updated, newdata, type = "prob")
  local_probabilities <- predict(forest, newdata, type = "prob")
  expect_identical(dimnames(probabilities), dimnames(local_probabilities))
  expect_equal(as.vector(probabilities), as.vector(local_probabilities))
  # Only setosa rows: every level still there, as in the local factor.
  expect_identical(predict(updated, iris[1:3, ]), predict(forest, iris[1:3, ]))

  back <- rdeploy_rollback(name)
  expect_identical(back$model$id, first$id)
  expect_equal(predict(back, newdata), predict(linear, newdata))
  expect_true(nrow(rdeploy_logs(name)) > 0)

  rdeploy_delete(back)
  expect_false(name %in% rdeploy_endpoints()$name[rdeploy_endpoints()$status != "deleted"])
  expect_error(predict(back, newdata), class = "rdeploy_api_error")
})

test_that("the README's lm goes live on a public URL, its API key printed once", {
  skip_if_no_server()
  rdeploy_connect(Sys.getenv("RDEPLOY_URL"), Sys.getenv("RDEPLOY_TOKEN"))
  name <- paste0("mpg-", suffix())
  fit <- lm(mpg ~ wt + hp, data = mtcars)
  endpoint <- rdeploy_deploy(fit, name, public = TRUE)
  key <- endpoint$secret$api_key
  expect_match(key, ".{20,}")
  expect_true(any(grepl(key, capture.output(print(endpoint)), fixed = TRUE)))
  expect_false(any(grepl(key, capture.output(print(endpoint)), fixed = TRUE)))
  # Row names (mtcars' car names) name the predictions, as locally.
  expect_equal(predict(endpoint, head(mtcars)), predict(fit, head(mtcars)))

  # The public URL under this server (the test server's PUBLIC_BASE_URL is another port).
  url <- sub("^https?://[^/]+", Sys.getenv("RDEPLOY_URL"), endpoint$public_url)
  answer <- httr2::request(url) |>
    httr2::req_headers(`x-api-key` = key) |>
    httr2::req_body_raw('[{"wt": 2.62, "hp": 110}]', type = "application/json") |>
    httr2::req_perform()
  expect_equal(
    httr2::resp_body_json(answer, simplifyVector = TRUE)$predictions,
    unname(predict(fit, data.frame(wt = 2.62, hp = 110)))
  )
  rdeploy_delete(endpoint)
})

test_that("each test model's kind predicts as locally, as blue/green updates of one endpoint", {
  skip_if_no_server()
  rdeploy_connect(Sys.getenv("RDEPLOY_URL"), Sys.getenv("RDEPLOY_TOKEN"))
  name <- paste0("kinds-", suffix())
  newdata <- iris[c(2, 60, 110, 140), ]

  # glm (binomial) with a factor input whose levels are not alphabetical: the endpoint
  # answers on the response scale, predict(type = "response") locally (see the README).
  set.seed(42)
  n <- 200
  data <- data.frame(x = rnorm(n), group = factor(sample(c("low", "mid", "high"), n, TRUE), levels = c("low", "mid", "high")))
  data$y <- rbinom(n, 1, plogis(0.5 * data$x + c(low = -1, mid = 0, high = 1)[as.character(data$group)]))
  binomial_glm <- glm(y ~ x + group, family = binomial, data = data)
  rows <- data[c(1:3, 198:200), c("x", "group")]
  endpoint <- rdeploy_deploy(binomial_glm, name)
  expect_equal(predict(endpoint, rows), predict(binomial_glm, rows, type = "response"))

  # ranger regression: its predict() returns an object; the endpoint answers its
  # $predictions, unnamed as there.
  forest <- ranger::ranger(mpg ~ ., data = mtcars, num.trees = 50, seed = 1)
  endpoint <- rdeploy_deploy(forest, name)
  expect_identical(endpoint$model$version, 2L)
  expect_equal(predict(endpoint, mtcars[c(1, 5, 9, 20), -1]), predict(forest, data = mtcars[c(1, 5, 9, 20), -1])$predictions)

  # rpart classification: the endpoint answers classes (predict(type = "class")); its
  # type = "prob" is rpart's own default, the probability matrix.
  tree <- rpart::rpart(Species ~ ., data = iris)
  endpoint <- rdeploy_deploy(tree, name)
  remote <- predict(endpoint, newdata)
  expect_identical(remote, predict(tree, newdata, type = "class"))
  expect_identical(levels(remote), levels(iris$Species))
  expect_identical(predict(endpoint, iris[1:2, ]), predict(tree, iris[1:2, ], type = "class"))
  probabilities <- predict(endpoint, newdata, type = "prob")
  expect_identical(dimnames(probabilities), dimnames(predict(tree, newdata)))
  expect_equal(probabilities, predict(tree, newdata))

  # e1071's svm, fitted without probabilities on species levels in a non-alphabetical
  # order: a factor with every level in the model's order, even when the rows all predict
  # one class (no probability call can name the others).
  reordered <- transform(iris, Species = factor(Species, levels = c("virginica", "setosa", "versicolor")))
  machine <- e1071::svm(Species ~ ., data = reordered)
  endpoint <- rdeploy_deploy(machine, name)
  expect_identical(predict(endpoint, newdata), predict(machine, newdata))
  only_setosa <- predict(endpoint, iris[1:3, ])
  expect_identical(levels(only_setosa), levels(reordered$Species))
  expect_identical(only_setosa, predict(machine, iris[1:3, ]))
  # Without probability = TRUE it has no probabilities: the API's reason, as a condition.
  expect_error(predict(endpoint, newdata, type = "prob"), "probability = TRUE", class = "rdeploy_http_400")

  # ranger classification with probability = FALSE: the same, from its $predictions.
  classifier <- ranger::ranger(Species ~ ., data = reordered, num.trees = 50, probability = FALSE, seed = 1)
  endpoint <- rdeploy_deploy(classifier, name)
  expect_identical(predict(endpoint, newdata), predict(classifier, data = newdata)$predictions)
  only_setosa <- predict(endpoint, iris[1:3, ])
  expect_identical(levels(only_setosa), levels(reordered$Species))
  expect_identical(only_setosa, predict(classifier, data = iris[1:3, ])$predictions)

  # rdeploy_logs(follow = TRUE) prints a runtime line that arrives while it follows: a
  # bundle whose predict_fn logs each call, invoked by another R process a moment later.
  bundle <- file.path(tempfile("bundle"), "model")
  dir.create(bundle, recursive = TRUE)
  fit <- lm(mpg ~ wt, data = mtcars)
  saveRDS(fit, file.path(bundle, "model.rds"))
  writeLines(c(
    "predict_fn <- function(model, data) {",
    "  message('rdeploy-test scored ', nrow(data), ' rows')",
    "  unname(predict(model, data))",
    "}"
  ), file.path(bundle, "predict.R"))
  tarball <- tempfile("bundle", fileext = ".tar.gz")
  here <- setwd(bundle)
  utils::tar(tarball, files = c("model.rds", "predict.R"), compression = "gzip", tar = "internal")
  setwd(here)
  endpoint <- rdeploy_deploy(tarball, name)
  expect_identical(endpoint$model$version, 6L)
  cursor <- max(0L, rdeploy_logs(endpoint)$id)
  caller <- paste0(
    "Sys.sleep(2); library(rdeploy); rdeploy_connect(Sys.getenv('RDEPLOY_URL'), Sys.getenv('RDEPLOY_TOKEN'));",
    " predict(rdeploy_endpoint('", name, "'), mtcars[1:3, 'wt', drop = FALSE])"
  )
  system2(file.path(R.home("bin"), "Rscript"), c("-e", shQuote(caller)), wait = FALSE, stdout = FALSE, stderr = FALSE)
  printed <- capture.output(followed <- rdeploy_logs(endpoint, follow = TRUE, after = cursor, max_seconds = 12))
  expect_true(any(grepl("rdeploy-test scored 3 rows", followed$message, fixed = TRUE)))
  expect_true(any(grepl("rdeploy-test scored 3 rows", printed, fixed = TRUE)))
  expect_true(all(followed$id > cursor))
  rdeploy_delete(endpoint)
})
