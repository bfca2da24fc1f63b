"""``python -m meshsdk.demo`` (``make demo``): Istio's bookinfo as local processes, each
app with its own embedded mesh, and seven scenes of live traffic through them.

* :mod:`meshsdk.demo.apps`: the tiny bookinfo apps (stdlib ``http.server``), one
  process each;
* :mod:`meshsdk.demo.fleet`: starting, watching and stopping those processes;
* :mod:`meshsdk.demo.scenes`: the driver and its scenes;
* :mod:`meshsdk.demo.display`: terminal output (live on a terminal, plain elsewhere).

The apps are configured by ``examples/bookinfo``; the scenes add the YAML of
``examples/demo`` to the driver's own mesh.
"""

from meshsdk.demo.scenes import SCENES, main

__all__ = ["SCENES", "main"]
