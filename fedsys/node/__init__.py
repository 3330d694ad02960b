"""Data-holder side logic: local settings, local updates, message handlers."""
