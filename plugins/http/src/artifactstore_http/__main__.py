"""``python -m artifactstore_http``: run the artifact server (the same as ``artifactstore-serve``)."""

from .serve import main

main()
