"""``python -m meshsdk.demo`` (``make demo``): Istio's bookinfo as local processes, each
app with its own embedded mesh fed by the config service, and seven scenes of live
traffic through them.

* :mod:`meshsdk.demo.apps`: the tiny bookinfo apps (stdlib ``http.server``), one
  process each, whose mesh comes from ``Mesh.connect``;
* :mod:`meshsdk.demo.fleet`: starting, watching and stopping the config service and
  the apps;
* :mod:`meshsdk.demo.edits`: the config edits on disk the scenes make, as a user would;
* :mod:`meshsdk.demo.scenes`: the driver and its scenes;
* :mod:`meshsdk.demo.display`: terminal output (live on a terminal, plain elsewhere).

The config service serves a temporary copy of ``examples/bookinfo``; the scenes edit
that copy with the YAML of ``examples/demo``, and every mesh follows.
"""

from meshsdk.demo.scenes import SCENES, main

__all__ = ["SCENES", "main"]
