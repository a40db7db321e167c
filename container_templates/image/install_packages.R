# Installs a serving image's R packages while the image is built, never at run time.
# Reads, beside this script: packages.txt (one name a line), repository (optional: the
# CRAN-like repository, RDEPLOY_CRAN_REPO, as the build sees it) and renv.lock (optional).
# A package R lacks comes from Debian (r-cran-<name in lower case>) when Debian has it,
# else from the repository.
here <- "/tmp/rdeploy-build"
wanted <- readLines(file.path(here, "packages.txt"))
missing <- function() setdiff(wanted, rownames(installed.packages()))
run <- function(command, args) {
  status <- system2(command, args)
  if (status != 0) stop(command, " ", args[1], " exited with status ", status, call. = FALSE)
}
apt_install <- function(packages) run("apt-get", c("install", "-y", "-q", "--no-install-recommends", packages))
in_debian <- function(package) {
  found <- suppressWarnings(system2("apt-cache", c("show", "--no-all-versions", package), stdout = TRUE, stderr = FALSE))
  length(found) > 0
}

if (length(missing())) {
  run("apt-get", c("update", "-q"))
  debian <- paste0("r-cran-", tolower(missing()))
  known <- vapply(debian, in_debian, logical(1))
  if (any(known)) apt_install(debian[known])
}

repository <- file.path(here, "repository")
if (length(missing()) && file.exists(repository)) {
  options(repos = c(CRAN = readLines(repository, n = 1)))
  available <- available.packages()
  needed <- unique(c(missing(), unlist(tools::package_dependencies(missing(), db = available, recursive = TRUE))))
  needed <- intersect(setdiff(needed, rownames(installed.packages())), rownames(available))
  # Compilers only for packages with code to compile: pure R packages keep the image small.
  if (any(available[needed, "NeedsCompilation"] %in% "yes")) apt_install("r-base-dev")
  install.packages(missing(), Ncpus = parallel::detectCores())
}

still_missing <- missing()
if (length(still_missing)) {
  where <- if (file.exists(repository)) "nor in RDEPLOY_CRAN_REPO" else "and RDEPLOY_CRAN_REPO is not set"
  stop("these R packages are not in Debian (as r-cran-*) ", where, ": ", paste(still_missing, collapse = ", "),
       call. = FALSE)
}

# renv.lock pins versions the image cannot promise (Debian's or the repository's are what
# there is): say where they differ, in the build log.
lockfile <- file.path(here, "renv.lock")
if (file.exists(lockfile)) {
  locked <- jsonlite::fromJSON(lockfile, simplifyVector = FALSE)$Packages
  for (name in intersect(names(locked), wanted)) {
    have <- utils::packageDescription(name, fields = "Version")
    if (!identical(have, locked[[name]]$Version)) {
      message(sprintf("renv.lock pins %s %s; the image has %s", name, locked[[name]]$Version, have))
    }
  }
}
