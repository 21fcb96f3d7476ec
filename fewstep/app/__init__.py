"""The application: the command line, up-front input validation, demo, plan and report."""
