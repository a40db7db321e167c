# Installs an rdeploy image's R packages at build time.
# Usage: Rscript install_packages.R <Posit Package Manager snapshot URL>
# Reads packages.txt (one name a line) and, if present, renv.lock beside it.
repo <- commandArgs(trailingOnly = TRUE)[1]
here <- "/tmp/rdeploy-build"
options(
  repos = c(CRAN = repo),
  # Package Manager serves Linux binaries only to clients that say which R
  # and platform they are.
  HTTPUserAgent = sprintf("R/%s R (%s)", getRversion(), paste(getRversion(), R.version$platform, R.version$arch, R.version$os)),
  Ncpus = parallel::detectCores()
)
packages <- readLines(file.path(here, "packages.txt"))
lockfile <- file.path(here, "renv.lock")
if (file.exists(lockfile)) {
  install.packages("renv")
  # Restores the locked versions into the site library, where `serve` finds them.
  renv::restore(lockfile = lockfile, library = .libPaths()[1], repos = c(CRAN = repo), prompt = FALSE)
}
missing <- setdiff(packages, rownames(installed.packages()))
if (length(missing)) install.packages(missing)
still_missing <- setdiff(packages, rownames(installed.packages()))
if (length(still_missing)) stop("could not install: ", paste(still_missing, collapse = ", "))
