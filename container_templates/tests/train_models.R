# Trains the models the runtime tests serve, at test time, with the R and
# packages of this machine. Usage: Rscript train_models.R <output dir>
# Each case becomes <output dir>/<case>/ holding what `serve` reads (model.rds,
# maybe predict.R and rdeploy.json) plus expected.json: the input rows, in the
# schema's column order, and R's own predict() output for them.
suppressPackageStartupMessages({
  library(jsonlite)
  library(randomForest)
  library(ranger)
  library(rpart)
  library(e1071)
})
out <- commandArgs(trailingOnly = TRUE)[1]
set.seed(42)

write_case <- function(name, model, rows, predictions, probabilities = NULL, predict_r = NULL, config = NULL) {
  dir <- file.path(out, name)
  dir.create(dir, recursive = TRUE, showWarnings = FALSE)
  saveRDS(model, file.path(dir, "model.rds"))
  if (!is.null(predict_r)) writeLines(predict_r, file.path(dir, "predict.R"))
  if (!is.null(config)) write_json(config, file.path(dir, "rdeploy.json"), auto_unbox = TRUE, pretty = TRUE)
  rownames(rows) <- NULL
  if (is.factor(predictions)) predictions <- as.character(predictions)
  expected <- list(rows = rows, predictions = unname(predictions))
  if (!is.null(probabilities)) expected$probabilities <- as.data.frame(probabilities)
  write_json(expected, file.path(dir, "expected.json"), digits = NA, dataframe = "rows", na = "null")
}

# lm: plain regression.
lm_rows <- mtcars[1:6, c("wt", "hp")]
m <- lm(mpg ~ wt + hp, data = mtcars)
write_case("lm", m, lm_rows, predict(m, lm_rows))

# Binomial glm with a factor input: predictions on the response scale.
n <- 200
glm_data <- data.frame(x = rnorm(n), group = factor(sample(c("low", "mid", "high"), n, TRUE), levels = c("low", "mid", "high")))
glm_data$y <- rbinom(n, 1, plogis(0.5 * glm_data$x + c(low = -1, mid = 0, high = 1)[as.character(glm_data$group)]))
m <- glm(y ~ x + group, family = binomial, data = glm_data)
glm_rows <- glm_data[unlist(lapply(levels(glm_data$group), function(l) which(glm_data$group == l)[1:2])), c("x", "group")]
write_case("glm_binomial", m, glm_rows, predict(m, glm_rows, type = "response"))

# randomForest classification: class labels, and probabilities on request.
m <- randomForest(Species ~ ., data = iris, ntree = 50)
rf_rows <- iris[c(1, 51, 101, 75, 130), 1:4]
write_case("randomforest", m, rf_rows, predict(m, rf_rows), probabilities = predict(m, rf_rows, type = "prob"))

# ranger regression: predictions unwrapped from $predictions.
m <- ranger(mpg ~ ., data = mtcars, num.trees = 50, seed = 1)
ranger_rows <- mtcars[c(1, 5, 9, 20), -1]
write_case("ranger", m, ranger_rows, predict(m, data = ranger_rows)$predictions)

# rpart classification tree: class labels, not its default probability matrix.
m <- rpart(Species ~ ., data = iris)
rpart_rows <- iris[c(2, 60, 110), 1:4]
write_case("rpart", m, rpart_rows, predict(m, rpart_rows, type = "class"))

# e1071 svm classification.
m <- svm(Species ~ ., data = iris)
svm_rows <- iris[c(3, 70, 140), 1:4]
write_case("svm", m, svm_rows, predict(m, svm_rows))

# A bundle whose predict.R preprocesses its input: the model was fitted on
# log(dose), clients send dose.
dose_data <- data.frame(dose = runif(50, 1, 100))
dose_data$response <- 3 + 2 * log(dose_data$dose) + rnorm(50, sd = 0.1)
dose_data$log_dose <- log(dose_data$dose)
m <- lm(response ~ log_dose, data = dose_data)
bundle_rows <- data.frame(dose = c(1, 10, 55.5))
predict_r <- c(
  "predict_fn <- function(model, data) {",
  "  data$log_dose <- log(data$dose)",
  "  unname(predict(model, data))",
  "}"
)
config <- list(
  format_version = 1, packages = list(),
  schema = list(columns = list(list(name = "dose", type = "numeric"))),
  prediction = list(kind = "numeric")
)
write_case("bundle_log_dose", m, bundle_rows, predict(m, data.frame(log_dose = log(bundle_rows$dose))), predict_r = predict_r, config = config)

# Test-only bundles built on a tiny lm.
tiny <- lm(mpg ~ wt, data = mtcars)
tiny_rows <- mtcars[1:2, "wt", drop = FALSE]
# Sleeps in predict_fn and records when each prediction ran (for the
# concurrency tests): RDEPLOY_TEST_SLEEP seconds, RDEPLOY_TEST_TRACE_DIR.
write_case("slow", tiny, tiny_rows, predict(tiny, tiny_rows), predict_r = c(
  "predict_fn <- function(model, data) {",
  "  trace <- file.path(Sys.getenv('RDEPLOY_TEST_TRACE_DIR', tempdir()), paste0(Sys.getpid(), '-', as.numeric(Sys.time())))",
  "  start <- as.numeric(Sys.time())",
  "  Sys.sleep(as.numeric(Sys.getenv('RDEPLOY_TEST_SLEEP', '3')))",
  "  writeLines(sprintf('%.6f', c(start, as.numeric(Sys.time()))), trace)",
  "  unname(predict(model, data))",
  "}"
))
# Takes RDEPLOY_TEST_SLEEP seconds to load.
write_case("slow_load", tiny, tiny_rows, predict(tiny, tiny_rows), predict_r = c(
  "load_fn <- function(model_dir) {",
  "  Sys.sleep(as.numeric(Sys.getenv('RDEPLOY_TEST_SLEEP', '3')))",
  "  readRDS(file.path(model_dir, 'model.rds'))",
  "}"
))
# Its predict always fails.
write_case("failing", tiny, tiny_rows, predict(tiny, tiny_rows), predict_r = c(
  "predict_fn <- function(model, data) stop('the model exploded')"
))
