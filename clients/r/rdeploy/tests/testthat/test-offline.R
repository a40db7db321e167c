test_that("the token is never printed", {
  conn <- rdeploy_connect("http://127.0.0.1:9", token = "rdp_secret-token-value")
  expect_false(any(grepl("secret-token-value", capture.output(print(conn)))))
  expect_false(any(grepl("secret-token-value", capture.output(str(conn)))))
})

test_that("an unreachable server is a classed condition", {
  conn <- rdeploy_connect("http://127.0.0.1:9", token = "rdp_x")
  expect_error(rdeploy_models(conn = conn), class = "rdeploy_connection_error")
})
