"""Stage 6, application: datasets, reference models, the report and the CLI."""
