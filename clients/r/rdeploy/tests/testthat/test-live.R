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
