"""The UI's shared code: session (the services handle, the demo), gate (what every page run needs
first), widgets, runs. Only app.py, pages/ and this package import streamlit."""
