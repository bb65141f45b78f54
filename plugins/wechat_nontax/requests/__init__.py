"""Refusals and voids: the request contract, the requests' SQL, the runner that carries them out,
and the operators of the DAG `nontax_requests`."""
