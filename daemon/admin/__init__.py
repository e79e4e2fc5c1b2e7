"""The admin server's HTTP surfaces (the operator routes and the ``/v1`` endpoints API, over one request, response
and error layer) and the operator actions they call."""
