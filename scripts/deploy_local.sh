#!/usr/bin/env bash
# Federated CLUES on Flower's deployment engine, all on 127.0.0.1: one SuperLink, one SuperNode per
# silo (each reading only its own silo file), `flwr run`, and every process stopped by PID at the end.
# TLS and SuperNode authentication by default: `--certs DIR` (ca.pem, server.pem, server.key; make a
# trial set with `clues certs --out DIR`), else self-signed certificates made for the run in OUT/certs.
# `--insecure` (plaintext, any SuperNode admitted) only on a trusted network; it prints a warning.
# The work is done by `clues federate --engine deployment` (see docs/federated.md); this wrapper
# only picks the venv's Python and turns telemetry off. Arguments are passed through, e.g.
#
#   scripts/deploy_local.sh --silo clinic=silos/clinic.jsonl --silo bank=silos/bank.jsonl \
#       --validation validation.jsonl --anchor anchor.jsonl --test test.jsonl --rounds 5 --out fl-deployed [--certs DIR | --insecure]
set -euo pipefail
PYTHON="${PYTHON:-$(command -v python)}"
export FLWR_TELEMETRY_ENABLED=0
exec "$PYTHON" -m clues.cli federate --engine deployment "$@"
