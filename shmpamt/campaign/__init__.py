"""Campaigns: a matrix of shards and its order-independent merge (light), and the
Dask glue that runs shards as tasks (a client of :mod:`shmpamt.api`)."""
