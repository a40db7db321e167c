# Trains the models the intake tests upload, at test time, with this machine's R.
# Usage: Rscript --vanilla train_models.R <output dir>
# Each case becomes <output dir>/<case>/model.rds (plus predict.R for the bundle) and
# expected.json: {"rows": [...input records...], "predictions": [...R's own predict()...]}.
suppressPackageStartupMessages({
  library(jsonlite)
  library(randomForest)
  library(ranger)
  library(rpart)
  library(e1071)
})
out <- commandArgs(trailingOnly = TRUE)[1]
set.seed(7)

write_case <- function(name, model, rows, predictions, predict_r = NULL) {
  dir <- file.path(out, name)
  dir.create(dir, recursive = TRUE, showWarnings = FALSE)
  saveRDS(model, file.path(dir, "model.rds"))
  if (!is.null(predict_r)) writeLines(predict_r, file.path(dir, "predict.R"))
  rownames(rows) <- NULL
  if (is.factor(predictions)) predictions <- as.character(predictions)
  write_json(list(rows = rows, predictions = unname(predictions)), file.path(dir, "expected.json"),
    digits = NA, dataframe = "rows", factor = "string", na = "null")
}

# Regression on numbers.
rows <- mtcars[c(1, 7, 20), c("wt", "hp")]
m <- lm(mpg ~ wt + hp, data = mtcars)
write_case("lm", m, rows, predict(m, rows))

# Binomial glm with a factor input whose levels are not alphabetical: response scale.
n <- 300
d <- data.frame(x = rnorm(n), group = factor(sample(c("low", "mid", "high"), n, TRUE), levels = c("low", "mid", "high")))
d$y <- rbinom(n, 1, plogis(0.8 * d$x + c(low = -1, mid = 0, high = 1)[as.character(d$group)]))
m <- glm(y ~ x + group, family = binomial, data = d)
rows <- d[c(which(d$group == "low")[1:2], which(d$group == "mid")[1:2], which(d$group == "high")[1:2]), c("x", "group")]
write_case("glm_binomial", m, rows, predict(m, rows, type = "response"))

# Classification forest: class labels.
m <- randomForest(Species ~ ., data = iris, ntree = 100)
rows <- iris[c(1, 51, 101, 77, 134), 1:4]
write_case("randomforest", m, rows, predict(m, rows))

# ranger regression: predictions live in $predictions.
m <- ranger(mpg ~ ., data = mtcars, num.trees = 100, seed = 3)
rows <- mtcars[c(2, 8, 15, 30), -1]
write_case("ranger", m, rows, predict(m, data = rows)$predictions)

# rpart classification tree: class labels.
m <- rpart(Species ~ ., data = iris)
rows <- iris[c(4, 66, 118), 1:4]
write_case("rpart", m, rows, predict(m, rows, type = "class"))

# e1071 svm classification.
m <- svm(Species ~ ., data = iris)
rows <- iris[c(9, 88, 145), 1:4]
write_case("svm", m, rows, predict(m, rows))

# A bundle whose predict.R transforms its input: fitted on log(dose), clients send dose.
d <- data.frame(dose = runif(60, 1, 100))
d$log_dose <- log(d$dose)
d$response <- 2 + 3 * d$log_dose + rnorm(60, sd = 0.1)
m <- lm(response ~ log_dose, data = d)
rows <- data.frame(dose = c(2, 20, 75.5))
write_case("bundle_log_dose", m, rows, predict(m, data.frame(log_dose = log(rows$dose))), predict_r = c(
  "predict_fn <- function(model, data) {",
  "  data$log_dose <- log(data$dose)",
  "  unname(predict(model, data))",
  "}"
))
