"""The app's backend: use-cases (services), jobs and the worker process, insights, import/export, auth, demo, plots."""
