"""Scale-out on Ray (``serve --ray``): runners as Ray actors on the cluster's nodes (``placement``,
``actor``, ``remote``) and models brought to a node by digest from the frontend's ``/v2`` (``sync``).
Imported only when a Ray address is set; see docs/scale-out.md."""
