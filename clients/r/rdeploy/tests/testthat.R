library(testthat)
library(rdeploy)

test_check("rdeploy")
