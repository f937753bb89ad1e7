"""``cellflow-rt serve``: a warm segmentation service over HTTP (needs the ``serve`` extra).

One request flows one way through the modules here::

    app.py (routes, token) -> options.py (query -> EvalSettings) -> work.py (bounded queue, worker
    threads, timeout) -> decode.py (body bytes -> array) -> limits.py (work the settings imply)
    -> cellflow_rt.pipeline -> answers.py (masks -> TIFF, GeoJSON, ROI zip or JSON bytes)

``server.py`` binds the socket (loopback unless a token or ``--insecure``), loads and warms the
models and runs uvicorn with a graceful drain; ``metrics.py`` keeps the Prometheus counters and
``openapi.py`` describes the API. Nothing here reads or writes a file named by a client: bodies are
decoded and answers encoded in memory. Importing this package imports nothing of the ASGI stack;
``app.py`` and ``server.py`` do.
"""
