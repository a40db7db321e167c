# Trains every model the tests use, at test time, with this machine's R and packages:
# the runtime tests serve them, the intake tests upload them (and build hostile bundles
# around them), the pipeline tests deploy them. testsupport/r_models.py runs it once per
# test session. Usage: Rscript --vanilla testsupport/train_models.R <output dir>
#
# Each case becomes <output dir>/<case>/ holding what `serve` reads (model.rds, maybe
# predict.R and rdeploy.json) plus expected.json: the input rows, in the schema's column
# order, and R's own predict() output for them (and class probabilities for the forest; the
# factor's levels, in the model's order, for a classifier).
# <output dir>/iris_versions/ holds two iris classifiers for update and rollback tests:
# v1.rds (the example model), v2.rds (trained on reversed species, so a client can tell
# which version answered) and expected.json {rows, v1, v2}.
suppressPackageStartupMessages({
  library(jsonlite)
  library(randomForest)
  library(ranger)
  library(rpart)
  library(e1071)
})
out <- commandArgs(trailingOnly = TRUE)[1]
this_script <- sub("^--file=", "", grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE))
set.seed(42)

write_case <- function(name, model, rows, predictions, probabilities = NULL, predict_r = NULL, config = NULL) {
  dir <- file.path(out, name)
  dir.create(dir, recursive = TRUE, showWarnings = FALSE)
  saveRDS(model, file.path(dir, "model.rds"))
  if (!is.null(predict_r)) writeLines(predict_r, file.path(dir, "predict.R"))
  if (!is.null(config)) write_json(config, file.path(dir, "rdeploy.json"), auto_unbox = TRUE, pretty = TRUE)
  rownames(rows) <- NULL
  levels <- levels(predictions)
  if (is.factor(predictions)) predictions <- as.character(predictions)
  expected <- list(rows = rows, predictions = unname(predictions))
  if (!is.null(levels)) expected$levels <- levels
  if (!is.null(probabilities)) expected$probabilities <- as.data.frame(probabilities)
  write_json(expected, file.path(dir, "expected.json"), digits = NA, dataframe = "rows", factor = "string", na = "null")
}

# The quick start's example model (examples/iris/train.R), trained by the example itself
# so the tests serve and deploy exactly what users are shown.
example_dir <- file.path(out, "example")
status <- system2(
  file.path(R.home("bin"), "Rscript"),
  c("--vanilla", shQuote(file.path(dirname(normalizePath(this_script)), "..", "examples", "iris", "train.R")), shQuote(example_dir))
)
if (status != 0) stop("examples/iris/train.R failed with status ", status)
forest <- readRDS(file.path(example_dir, "iris-rf.rds"))

# lm: plain regression.
lm_rows <- mtcars[1:6, c("wt", "hp")]
m <- lm(mpg ~ wt + hp, data = mtcars)
write_case("lm", m, lm_rows, predict(m, lm_rows))

# Binomial glm with a factor input whose levels are not alphabetical: predictions on the
# response scale.
n <- 200
glm_data <- data.frame(x = rnorm(n), group = factor(sample(c("low", "mid", "high"), n, TRUE), levels = c("low", "mid", "high")))
glm_data$y <- rbinom(n, 1, plogis(0.5 * glm_data$x + c(low = -1, mid = 0, high = 1)[as.character(glm_data$group)]))
m <- glm(y ~ x + group, family = binomial, data = glm_data)
glm_rows <- glm_data[unlist(lapply(levels(glm_data$group), function(l) which(glm_data$group == l)[1:2])), c("x", "group")]
write_case("glm_binomial", m, glm_rows, predict(m, glm_rows, type = "response"))

# randomForest classification (the example model): class labels, and probabilities on request.
rf_rows <- iris[c(1, 51, 101, 75, 130), 1:4]
write_case("randomforest", forest, rf_rows, predict(forest, rf_rows), probabilities = predict(forest, rf_rows, type = "prob"))

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

# Classifiers fitted without class probabilities, on species levels in a non-alphabetical
# order, with rows that all predict setosa: only the model knows its other classes.
reordered <- iris
reordered$Species <- factor(reordered$Species, levels = c("virginica", "setosa", "versicolor"))
one_class_rows <- iris[c(1, 20, 40), 1:4]
m <- svm(Species ~ ., data = reordered)
write_case("svm_no_prob", m, one_class_rows, predict(m, one_class_rows))
m <- ranger(Species ~ ., data = reordered, num.trees = 50, probability = FALSE, seed = 1)
write_case("ranger_no_prob", m, one_class_rows, predict(m, data = one_class_rows)$predictions)

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

# Two versions of an iris classifier: v1 is the example model, v2 learnt the species in
# reverse order.
versions_dir <- file.path(out, "iris_versions")
dir.create(versions_dir, showWarnings = FALSE)
flipped <- iris
flipped$Species <- factor(rev(levels(iris$Species))[as.integer(iris$Species)], levels = levels(iris$Species))
set.seed(2)
v2 <- randomForest(Species ~ ., data = flipped, ntree = 50)
iris_rows <- rf_rows
rownames(iris_rows) <- NULL
saveRDS(forest, file.path(versions_dir, "v1.rds"))
saveRDS(v2, file.path(versions_dir, "v2.rds"))
write_json(
  list(rows = iris_rows, v1 = as.character(predict(forest, iris_rows)), v2 = as.character(predict(v2, iris_rows))),
  file.path(versions_dir, "expected.json"),
  dataframe = "rows", digits = NA
)
