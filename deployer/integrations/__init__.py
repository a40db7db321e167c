"""One module per external system; nothing else in rdeploy talks to them directly."""
