"""The htmx dashboard: thin views over deployer services."""
