"""`refface serve`: a local web page over the Python API (FastAPI + one static HTML page)."""
