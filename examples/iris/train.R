# The quick start's example model: a random forest classifying iris species.
# Usage: Rscript --vanilla examples/iris/train.R <output dir>
# Writes <output dir>/iris-rf.rds (the model, saved with saveRDS as users do) and
# <output dir>/sample.csv (a few input rows, which give the upload an input schema and
# an example request). Deterministic: the same seed gives the same model.
suppressPackageStartupMessages(library(randomForest))
out <- commandArgs(trailingOnly = TRUE)[1]
if (is.na(out)) out <- "."
dir.create(out, recursive = TRUE, showWarnings = FALSE)
set.seed(42)
model <- randomForest(Species ~ ., data = iris, ntree = 100)
saveRDS(model, file.path(out, "iris-rf.rds"))
write.csv(iris[c(1, 51, 101), 1:4], file.path(out, "sample.csv"), row.names = FALSE)
