"""The local stack: a Ray head, an MLflow tracking server and a SeaweedFS S3 store on loopback.

`python -m infra.local.stack up|down|status` (what `make stack` and `make stack-down` run).
The process and service helpers here are also what the test fixtures start servers with.
"""
