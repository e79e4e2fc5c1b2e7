"""One attempt of one delivery over HTTP: an endpoint's precomputed request, the sender, each endpoint's lane."""
