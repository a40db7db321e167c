"""Files shipped into serving images and Lambda functions; tests live in tests/."""
